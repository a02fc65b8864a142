"""Contracts for evaluator results: the scores of one scored case (what the evaluator emits), and
a single recorded score or failed evaluator (a person's verdict; logs of earlier versions)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from schemas.common import Event, Id, ScoreDataType, ScoreSource


class ScoreRecorded(Event):
    """One score of one run item. Its `score_id` is deterministic (run item, name, source): a later
    event with the same id replaces the value, and the read model keeps the earlier ones as
    history. A person's verdict is one; the evaluator records its scores in `CaseScored` (until
    ADR 0008 it emitted one `ScoreRecorded` per score; the read models still apply those)."""

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


class ScoreRetracted(Event):
    """A person took back a verdict: the run item's manual score of that name goes (its value
    stays in the history), unless a verdict newer than the retraction replaced it; a verdict
    older than the retraction, arriving later, is history only."""

    score_id: Id = Field(description="uuid5 of (run item, name, `manual`): the verdict's id.")
    run_item_id: Id = Field(description="Run item of the verdict.")
    run_id: Id | None = Field(None, description="Run of the item.")
    dataset_item_id: Id | None = Field(None, description="Dataset item of the scored trace.")
    trace_id: Id | None = Field(None, description="Scored trace.")
    name: str = Field(description="Name of the verdict taken back, e.g. `manual`.")
    retracted_by: str | None = Field(None, description="Who took it back.")
    reason: str | None = Field(None, description="Why, in a few words.")
    retracted_at: datetime = Field(description="When; verdicts up to this time are taken back.")


class EvaluationFailed(Event):
    """An evaluator raised on a case. The other evaluators of the case are unaffected. Emitted
    until ADR 0008; the evaluator now reports failures inside `CaseScored`."""

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


class CaseScore(BaseModel):
    """One score inside a `CaseScored`; the case's run item, run, trace and time are the event's."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    score_id: Id = Field(description="uuid5 of (run item, name, source).")
    name: str = Field(description="Score name, e.g. `exact_match`.")
    value: float = Field(description="Numeric value; booleans are 1.0 / 0.0.")
    data_type: ScoreDataType = Field(description="numeric, boolean or categorical.")
    string_value: str | None = Field(None, description="Label of a categorical score.")
    source: ScoreSource = Field(description="programmatic or llm_judge.")
    comment: str | None = Field(None, description="The evaluator's reason, when it gives one.")
    evaluator: str = Field(description="Evaluator type that produced the score.")
    evaluator_version: str = Field(description="Version of that evaluator.")
    spec_hash: str = Field(description="Hash of the evaluator spec used.")
    pass_threshold: float | None = Field(
        None, ge=0, le=1, description="The spec's `pass_threshold`: a value at or above it "
                                      "passes; absent: 0.5.")
    input_tokens: int | None = Field(
        None, ge=0, description="Input tokens the evaluator's model used for this score (the "
                                "LLM judge's, as its endpoint reported them), if any.")
    output_tokens: int | None = Field(
        None, ge=0, description="Output tokens the evaluator's model used for this score.")


class CaseFailure(BaseModel):
    """One evaluator that raised inside a `CaseScored`."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    failure_id: Id = Field(description="uuid5 of (run item, evaluator name).")
    name: str = Field(description="Score name the evaluator would have produced.")
    evaluator: str = Field(description="Evaluator type.")
    evaluator_version: str | None = Field(None, description="Version of that evaluator.")
    spec_hash: str | None = Field(None, description="Hash of the evaluator spec used.")
    reason: str = Field(description="What went wrong, e.g. the exception and its message.")


class CaseScored(Event):
    """The evaluator scored one case — a finished trace or a score request — with every evaluator
    in force: the scores they recorded and the evaluators that failed, in one event.

    Each score means what a `ScoreRecorded` with the same fields means (the read models apply it
    as one, docs/adr/0008); a case with a `request_id` is also that request's completion for the
    run item (what `ScoringCompleted` said apart). Every scorable case yields exactly one, even
    with no score (exact match without an expected output, say)."""

    run_item_id: Id = Field(description="uuid5 of (run, dataset item), or of the trace.")
    run_id: Id | None = Field(None, description="Run of the scored item.")
    dataset_item_id: Id | None = Field(None, description="Dataset item of the scored trace.")
    trace_id: Id | None = Field(None, description="Scored trace.")
    request_id: Id | None = Field(None, description="Score request that caused it, if any.")
    observed_at: datetime = Field(
        description="Time of the fact scored (trace completion or request); the latest score "
                    "of a name and source wins.")
    scores: tuple[CaseScore, ...] = Field(description="The scores recorded.")
    failures: tuple[CaseFailure, ...] = Field((), description="The evaluators that raised.")
