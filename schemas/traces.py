"""Contracts for what gets scored: a finished trace, and a request to (re)score a run item."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from schemas.common import (
    EvaluatorSpec,
    Event,
    Id,
    JSONValue,
    TraceStatus,
    run_item_key,
)


class Usage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    input_tokens: int = Field(0, ge=0, le=2**31 - 1, description="Prompt tokens consumed.")
    output_tokens: int = Field(0, ge=0, le=2**31 - 1, description="Completion tokens produced.")


class ScoringCase(Event):
    """Everything an evaluator needs, carried by the event itself so evaluators stay stateless."""

    run_id: Id | None = Field(None, description="Run this execution belongs to, if any.")
    dataset_id: Id | None = Field(None, description="Dataset of the run or item, if any.")
    dataset_item_id: Id | None = Field(None, description="Dataset item (test case) executed.")
    trace_id: Id = Field(description="Id of the trace (one execution of the agent).",
                         examples=["trace-0001"])
    input: JSONValue = Field(None, description="Input the agent was given (any JSON).")
    output: JSONValue = Field(None, description="What the agent produced (any JSON).")
    expected_output: JSONValue = Field(
        None, description="Expected output of the dataset item; null when the trace has none.")
    evaluators: tuple[EvaluatorSpec, ...] = Field(
        default=(), description="Evaluator specs in force for this case.")

    @property
    def run_item_id(self) -> str:
        return run_item_key(self.run_id, self.dataset_item_id, self.trace_id)


class TraceCompleted(ScoringCase):
    """An execution of the agent finished. Scored automatically when `status` is `succeeded`."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "trace_id": "trace-0001", "run_id": "5b0a...", "dataset_item_id": "item-1",
        "input": {"question": "Capital of France?"}, "output": "Paris",
        "expected_output": "Paris", "status": "succeeded", "latency_ms": 812.5,
        "usage": {"input_tokens": 12, "output_tokens": 3}, "cost": 0.0004,
        "evaluators": [{"type": "exact_match"}], "completed_at": "2026-11-22T10:00:00Z"}]})

    status: TraceStatus = Field(description="`succeeded` or `failed`; failed traces get no score.")
    error: str | None = Field(None, description="Error message of a failed execution.")
    latency_ms: float | None = Field(None, ge=0, description="Wall time of the execution.")
    usage: Usage | None = Field(None, description="Token usage of the execution.")
    cost: float | None = Field(None, ge=0, description="Cost of the execution in USD.")
    metadata: dict[str, JSONValue] | None = Field(None, description="Free-form metadata.")
    completed_at: datetime = Field(description="When the execution finished (UTC).")


class ScoreRequested(ScoringCase):
    """Score (again) one run item with the given evaluators; handled exactly like a trace."""

    request_id: Id = Field(description="Groups the requests of one evaluate or replay call.")
    requested_at: datetime = Field(description="When the request was made; later requests win.")
