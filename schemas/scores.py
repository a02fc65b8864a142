"""Contracts for evaluator results: a recorded score, or an evaluator that failed."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from schemas.common import Event, Id, ScoreDataType, ScoreSource


class ScoreRecorded(Event):
    """One score of one run item. Its `score_id` is deterministic (run item, name, source): a later
    event with the same id replaces the value, and the read model keeps the earlier ones as
    history."""

    score_id: Id = Field(description="uuid5 of (run item, name, source).")
    run_item_id: Id = Field(description="uuid5 of (run, dataset item), or of the trace.")
    run_id: Id | None = Field(None, description="Run of the scored item.")
    dataset_item_id: Id | None = Field(None, description="Dataset item of the scored trace.")
    trace_id: Id | None = Field(None, description="Scored trace.")
    name: str = Field(description="Score name, e.g. `exact_match` or `manual`.")
    value: float = Field(description="Numeric value; booleans are 1.0 / 0.0.")
    data_type: ScoreDataType = Field(description="numeric, boolean or categorical.")
    string_value: str | None = Field(None, description="Label of a categorical score.")
    source: ScoreSource = Field(description="programmatic, manual or llm_judge.")
    comment: str | None = Field(None, description="Free text, e.g. a reviewer's reason.")
    created_by: str | None = Field(None, description="Who recorded a manual score.")
    evaluator: str | None = Field(None, description="Evaluator type that produced the score.")
    evaluator_version: str | None = Field(None, description="Version of that evaluator.")
    spec_hash: str | None = Field(None, description="Hash of the evaluator spec used.")
    request_id: Id | None = Field(None, description="Score request that caused it, if any.")
    observed_at: datetime = Field(
        description="Time of the fact scored (trace completion, request or manual verdict); "
                    "the latest one wins.")


class EvaluationFailed(Event):
    """An evaluator raised on a case. The other evaluators of the case are unaffected."""

    failure_id: Id = Field(description="uuid5 of (run item, evaluator name).")
    run_item_id: Id = Field(description="Run item the evaluator was applied to.")
    run_id: Id | None = Field(None, description="Run of the item.")
    dataset_item_id: Id | None = Field(None, description="Dataset item of the case.")
    trace_id: Id | None = Field(None, description="Trace of the case.")
    name: str = Field(description="Score name the evaluator would have produced.")
    evaluator: str = Field(description="Evaluator type.")
    evaluator_version: str | None = Field(None, description="Version of that evaluator.")
    spec_hash: str | None = Field(None, description="Hash of the evaluator spec used.")
    reason: str = Field(description="What went wrong, e.g. the exception and its message.")
    request_id: Id | None = Field(None, description="Score request that caused it, if any.")
    observed_at: datetime = Field(description="Time of the fact that was being scored.")
