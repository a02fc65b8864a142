"""Request bodies of the ingest API: what a client may send, validated field by field."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from schemas.common import EvaluatorSpec, Id, JSONValue, TraceStatus
from schemas.traces import Usage
from services.evaluator.evaluators import SpecError, validate_spec


def _checked_spec(spec: EvaluatorSpec) -> EvaluatorSpec:
    try:
        validate_spec(spec)
    except SpecError as e:
        raise ValueError(f"{e.field}: {e.message}") from None
    return spec


CheckedSpec = Annotated[EvaluatorSpec, AfterValidator(_checked_spec)]


def _unique_names(specs: list[EvaluatorSpec] | None) -> list[EvaluatorSpec] | None:
    if specs:
        names = [s.score_name for s in specs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"two evaluators would record the same score name {dupes}; "
                             "give one of them a `name`")
    return specs


Specs = Annotated[list[CheckedSpec], AfterValidator(_unique_names), Field(max_length=50)]


class Command(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateDataset(Command):
    name: str = Field(min_length=1, max_length=200, examples=["capitals"])
    description: str | None = Field(None, max_length=10_000)
    evaluators: Specs | None = Field(
        None, description="Evaluator specs; none means `[{\"type\": \"exact_match\"}]`.",
        examples=[[{"type": "exact_match"}, {"type": "contains", "keywords": ["paris"]}]])


class ItemIn(Command):
    id: Id | None = Field(None, description="Your id for the item; generated when absent.")
    input: JSONValue = None
    expected_output: JSONValue = None
    metadata: dict[str, Any] | None = None


class UpsertItems(Command):
    items: list[ItemIn] = Field(min_length=1, max_length=1000)


class StartRun(Command):
    dataset_id: Id
    name: str = Field(min_length=1, max_length=200, examples=["gpt-4o, prompt v3"])
    evaluators: Specs | None = Field(None, description="Own specs; default: the dataset's.")
    metadata: dict[str, Any] | None = None


class TraceIn(Command):
    trace_id: Id
    run_id: Id | None = None
    dataset_item_id: Id | None = None
    input: JSONValue = None
    output: JSONValue = Field(description="What the agent produced (any JSON; null allowed).")
    status: TraceStatus
    error: str | None = Field(None, max_length=100_000)
    latency_ms: float | None = Field(None, ge=0)
    usage: Usage | None = None
    cost: float | None = Field(None, ge=0)
    metadata: dict[str, Any] | None = None


class PostTraces(Command):
    traces: list[TraceIn] = Field(min_length=1, max_length=1000)
