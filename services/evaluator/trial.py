"""Evaluator specs tried on a few outputs without a run: the evaluator's own scoring
(`score_cases`) on cases that are never published or stored — what `POST /v1/evaluators/try`
and `evalstream evaluators try` answer, for writing a spec (a regex, a JSON Schema, a judge's
criteria, a plugin's options) against examples before a dataset uses it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from schemas.common import PASS_THRESHOLD, EvaluatorSpec
from schemas.envelope import wrap
from schemas.scores import CaseScored
from schemas.traces import TraceCompleted
from services.evaluator.llm_judge import LLMJudge
from services.evaluator.scoring import score_cases
from services.settings import Settings
from services.threads import in_daemon_thread


class TrialTimeout(TimeoutError):
    """The evaluators did not finish within the trial's limit; the message says which."""


async def try_specs(specs: Sequence[EvaluatorSpec], cases: Sequence[dict[str, Any]],
                    settings: Settings, limit: float | None = None) -> list[dict[str, Any]]:
    """Each case (`input`, `output`, `expected_output`, `metadata`) scored with every spec: its
    scores (value, label, comment, passed) and its evaluators' failures, in the cases' order.

    In a daemon thread and an event loop of their own: a plugin's plain function that takes its
    time holds up this call, not the API's other requests; one that never returns is given up
    after `limit` seconds (default: the async evaluators' deadline and 10 s more): TrialTimeout."""
    limit = settings.async_evaluators.deadline_s + 10 if limit is None else limit
    try:
        return await asyncio.wait_for(in_daemon_thread(
            asyncio.run, _score(specs, cases, settings), name="evalstream-try"), limit)
    except TimeoutError:
        raise TrialTimeout(f"the evaluators did not finish within {limit:g} s (a plugin's "
                           "plain function that does not return?)") from None


async def _score(specs: Sequence[EvaluatorSpec], cases: Sequence[dict[str, Any]],
                 settings: Settings) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    envelopes = [wrap(TraceCompleted(
        trace_id=f"try-{n}", input=case.get("input"), output=case.get("output"),
        expected_output=case.get("expected_output"), metadata=case.get("metadata"),
        status="succeeded", completed_at=now, evaluators=tuple(specs)),
        source="evalstream/try", key=f"try-{n}", id=f"try-{n}") for n, case in enumerate(cases)]
    judge = LLMJudge(settings.llm_judge)
    try:
        scored = await score_cases(envelopes, judge, settings.async_evaluators)
    finally:
        await judge.aclose()
    return [_answer(env.event) for env in scored]  # type: ignore[arg-type]


def _answer(case: CaseScored) -> dict[str, Any]:
    def passed(value: float, data_type: str, threshold: float | None) -> bool | None:
        if data_type == "categorical":
            return None  # a label neither passes nor fails
        return value >= (PASS_THRESHOLD if threshold is None else threshold)

    return {
        "scores": [{"name": s.name, "evaluator": s.evaluator,
                    "evaluator_version": s.evaluator_version, "source": s.source,
                    "value": s.value, "data_type": s.data_type, "label": s.string_value,
                    "passed": passed(s.value, s.data_type, s.pass_threshold),
                    "comment": s.comment} for s in case.scores],
        "failures": [{"name": f.name, "evaluator": f.evaluator, "reason": f.reason}
                     for f in case.failures]}
