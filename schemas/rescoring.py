"""Contracts for rescoring on demand: a batch of score requests was issued, and each requested case
was scored, so that the progress of a request can be read without guessing."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from schemas.common import EvaluatorSpec, Event, Id, deterministic_id


class ScoreRequestsIssued(Event):
    """A batch of `ScoreRequested` events went out under one request id, from
    `POST /v1/runs/{id}/evaluate` or `evalstream replay`; `requested` is how many."""

    request_id: Id = Field(description="Id shared by every ScoreRequested of the batch.")
    origin: Literal["evaluate", "replay"] = Field(
        description="`evaluate` (the HTTP API, one run) or `replay` (the command line, a slice "
                    "of the log).")
    run_id: Id | None = Field(None, description="The run rescored, when the request is about one.")
    requested: int = Field(ge=0, description="Number of ScoreRequested events (one per run item).")
    runs: dict[str, int] | None = Field(
        None, description="Requests per run id (`\"\"` for traces outside any run).")
    evaluators: tuple[EvaluatorSpec, ...] | None = Field(
        None, description="Specs given for the whole request; null when each case kept its own.")
    filters: dict[str, list[str] | str] | None = Field(
        None, description="What a replay selected: run, dataset and trace ids, `since`.")
    interrupted: bool = Field(
        False, description="A replay that was stopped before it had requested everything.")
    requested_at: datetime = Field(description="Time carried by every ScoreRequested of the batch.")


class ScoringCompleted(Event):
    """The evaluator has handled one `ScoreRequested`: how many scores it recorded and how many
    evaluators failed (both may be zero, e.g. exact match without an expected output). Emitted
    until ADR 0008; a `CaseScored` with a `request_id` now says the same."""

    request_id: Id = Field(description="Request the case belonged to.")
    run_item_id: Id = Field(description="Run item that was (re)scored.")
    run_id: Id | None = Field(None, description="Run of the item.")
    trace_id: Id | None = Field(None, description="Trace of the item.")
    scored: int = Field(ge=0, description="ScoreRecorded events the case produced.")
    failed: int = Field(ge=0, description="EvaluationFailed events the case produced.")
    observed_at: datetime = Field(description="The request's time, as on the scores it produced.")


def score_request_event_id(request_id: str, run_item_id: str) -> str:
    """Event id of the ScoreRequested of one run item in one request: sent twice (an outbox
    relay retrying, say), it is the same event, and so are the scores it yields."""
    return deterministic_id("score-requested", request_id, run_item_id)


def issued_event_id(request_id: str) -> str:
    """Event id of a request's ScoreRequestsIssued."""
    return deterministic_id("score-requests-issued", request_id)
