"""Request bodies of the ingest API: what a client may send, validated field by field."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from schemas.common import EvaluatorSpec, Id, JSONValue, ScoreDataType, TraceStatus
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


def _nul_at(value: Any, path: str = "") -> str | None:
    """Where a U+0000 sits in a JSON value, if anywhere: Postgres stores no NUL in text or jsonb,
    so such a value would fail downstream, after the trace was already on the log."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for k, v in value.items():
            if "\x00" in k:
                return f"{path}.{k!r}" if path else repr(k)
            if (found := _nul_at(v, f"{path}.{k}" if path else str(k))) is not None:
                return found
    elif isinstance(value, list):
        for n, v in enumerate(value):
            if (found := _nul_at(v, f"{path}.{n}" if path else str(n))) is not None:
                return found
    return None


class Command(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        # Most values are plain strings, numbers or None: answered without the isinstance chain
        # below (isinstance on a model class goes through ABCMeta) and the walk; this validator
        # runs on every field of every trace.
        if type(value) is str:
            if "\x00" not in value:
                return value
        elif value is None or type(value) in (int, float, bool):
            return value
        if isinstance(value, BaseModel) or (isinstance(value, list) and value
                                            and isinstance(value[0], BaseModel)):
            return value  # nested commands checked themselves
        if (where := _nul_at(value)) is not None:
            raise ValueError(f"contains U+0000 (NUL){' at ' + where if where else ''}, which "
                             "cannot be stored; remove or escape it")
        return value


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


class DeleteItems(Command):
    ids: list[Id] = Field(min_length=1, max_length=1000, description="Ids of the items to remove.")


class SetBaseline(Command):
    run_id: Id | None = Field(description="A run of the dataset; null: no baseline.")


def _scalar(value: Any) -> bool:
    return value is None or type(value) in (str, int, float, bool)


def _where(where: dict[str, Any]) -> dict[str, Any]:
    for key, value in where.items():
        if not key or len(key) > 200 or "" in key.split("."):
            raise ValueError(f"{key!r} is not a metadata key: 1-200 characters, dots between "
                             "the names of nested keys")
        if not (_scalar(value) or (isinstance(value, list) and value
                                   and all(_scalar(v) for v in value))):
            raise ValueError(f"{key!r}: give a string, number, boolean or null, or a non-empty "
                             "list of them (any of which matches)")
    return where


class SetScoringRule(Command):
    """Which traces outside runs (production traffic) are scored, and by what."""

    evaluators: Specs = Field(min_length=1, description="What the rule's traces are scored by.",
                              examples=[[{"type": "llm_judge", "name": "helpful",
                                          "criteria": "answers the user's question"}]])
    sample_rate: float = Field(1.0, gt=0, le=1, description="Share of the matching traces "
                                                            "scored (0 < rate ≤ 1), chosen by "
                                                            "trace id.")
    where: Annotated[dict[str, Any], AfterValidator(_where)] = Field(
        default_factory=dict, max_length=20,
        description="Trace metadata to match: key (dots go into nested objects) → a value, or "
                    "a list of values any of which matches; an array in the metadata matches "
                    "by any element. Empty: every trace outside runs.",
        examples=[{"env": "production", "model": ["gpt-4o", "gpt-4o-mini"]}])
    enabled: bool = Field(True, description="A disabled rule selects no trace.")


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


class EvaluateRun(Command):
    evaluators: Specs | None = Field(
        None, description="Specs to score the run's items with; default: the run's own.",
        examples=[[{"type": "contains", "name": "mentions_city", "keywords": ["paris", "rome"]}]])
    dataset_item_ids: list[Id] | None = Field(
        None, max_length=100_000, description="Only these items of the run (each must have a "
                                              "succeeded trace in it); default: every one.")
    trace_ids: list[Id] | None = Field(
        None, max_length=100_000, description="Only the run items of these traces (the latest "
                                              "of their item, succeeded), besides "
                                              "`dataset_item_ids`.")


class TryCase(Command):
    input: JSONValue = None
    output: JSONValue = Field(description="The output to score (any JSON; null allowed).")
    expected_output: JSONValue = None
    metadata: dict[str, Any] | None = None


class TryEvaluators(Command):
    """Specs tried on a few outputs: scored as the evaluator would, nothing published."""

    evaluators: Specs = Field(min_length=1, examples=[[{"type": "regex", "pattern": r"^\d+$"}]])
    cases: list[TryCase] = Field(min_length=1, max_length=100,
                                 examples=[[{"output": "42", "expected_output": "42"}]])


class RecordScore(Command):
    """A person's verdict on one run item, or (no `run_id`) on a trace outside runs; a later
    verdict of the same name replaces it."""

    run_id: Id | None = Field(None, description="The run; none: a trace outside runs (give "
                                                "`trace_id`).")
    dataset_item_id: Id | None = Field(None, description="The item scored; or give `trace_id`.")
    trace_id: Id | None = Field(None, description="The trace scored; or give `dataset_item_id`.")
    name: str = Field("manual", min_length=1, max_length=200, description="Score name.")
    data_type: ScoreDataType = Field("boolean", description="boolean (default), numeric or "
                                                            "categorical.")
    # Field order matters: the validators below read `data_type` and `value` validated before.
    value: bool | int | float | str | None = Field(
        None, validate_default=True,
        description="boolean: true/false or 1/0; numeric: a number; categorical: the label, or "
                    "a number beside `string_value`.", examples=[True, 0.8, "partially correct"])
    string_value: str | None = Field(
        None, max_length=1000, validate_default=True,
        description="Label of a categorical score (or give it as `value`).")
    comment: str | None = Field(None, max_length=10_000, description="Why, in a few words.")
    created_by: str | None = Field(None, max_length=200, description="Who gave the verdict.")

    @field_validator("value")
    @classmethod
    def _value_fits_type(cls, value: Any, info: ValidationInfo) -> Any:
        data_type = info.data.get("data_type")
        if data_type == "boolean":
            if isinstance(value, bool) or (isinstance(value, int | float) and value in (0, 1)):
                return value
            raise ValueError("a boolean score is true/false or 1/0")
        if data_type == "numeric":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError("a numeric score needs a number")
            if not math.isfinite(value):
                raise ValueError("a numeric score must be finite")
        if data_type == "categorical" and (
                isinstance(value, bool)
                or (isinstance(value, float) and not math.isfinite(value))):
            raise ValueError("a categorical score's value is its label or a finite number")
        return value

    @field_validator("string_value")
    @classmethod
    def _label_fits_type(cls, label: str | None, info: ValidationInfo) -> str | None:
        data_type, value = info.data.get("data_type"), info.data.get("value")
        if data_type == "categorical":
            if isinstance(value, str) and label is not None and label != value:
                raise ValueError("differs from `value`; give the label once")
            if label is None and not isinstance(value, str):
                raise ValueError("a categorical score needs a label: `string_value`, or `value` "
                                 "as a string")
            if not (label if label is not None else value).strip():
                raise ValueError("the label is blank")
        elif label is not None and data_type is not None:
            raise ValueError(f"only categorical scores have a label, not {data_type} ones")
        return label

    def scored(self) -> tuple[float, str | None]:
        """The value as a score carries it: a float, and the label of a categorical score."""
        if self.data_type == "categorical":
            if isinstance(self.value, str):
                return 0.0, self.value
            return float(self.value or 0.0), self.string_value
        return float(self.value), None


class RetractScore(Command):
    """A person takes back their verdict on one run item, or (no `run_id`) on a trace outside
    runs (a verdict given later stands)."""

    run_id: Id | None = Field(None, description="The run; none: a trace outside runs (give "
                                                "`trace_id`).")
    dataset_item_id: Id | None = Field(None, description="The item scored; or give `trace_id`.")
    trace_id: Id | None = Field(None, description="The trace scored; or give `dataset_item_id`.")
    name: str = Field("manual", min_length=1, max_length=200,
                      description="Name of the verdict to take back.")
    retracted_by: str | None = Field(None, max_length=200, description="Who takes it back.")
    reason: str | None = Field(None, max_length=10_000, description="Why, in a few words.")


class RecordScores(Command):
    """Several people's verdicts at once (an import from an annotation tool, say)."""

    scores: list[RecordScore] = Field(min_length=1, max_length=1000,
                                      description="Up to 1,000 verdicts; all or none are taken.")
