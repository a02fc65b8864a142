"""Turns scoring cases (finished traces, score requests) into `CaseScored` events: a pure function
of the event and the evaluator specs it carries, so any instance can score any partition and a
replay of the same events yields the same score ids, values and event ids.

One event per case, not one per score (docs/adr/0008): a case's scores, failures and, for a score
request, its completion arrive together, and each trace costs two Kafka records instead of four."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from schemas.common import EvaluatorSpec, deterministic_id, score_id
from schemas.envelope import Envelope, wrap
from schemas.scores import CaseFailure, CaseScore, CaseScored
from schemas.traces import ScoreRequested, ScoringCase, TraceCompleted
from services.evaluator.evaluators import REGISTRY
from services.evaluator.plugins import call_in_thread, call_many
from services.settings import AsyncEvaluatorSettings

if TYPE_CHECKING:
    from services.evaluator.evaluators import Score
    from services.evaluator.llm_judge import LLMJudge

SOURCE = "evalstream/evaluator"


def is_scorable(event: object) -> bool:
    """Succeeded traces and every score request are scored; failed traces are not, nor traces
    outside runs that carry no spec (production traffic no scoring rule selected: nothing to
    report, and no run waits for the report)."""
    return isinstance(event, ScoreRequested) or (
        isinstance(event, TraceCompleted) and event.status == "succeeded"
        and (bool(event.evaluators) or event.run_id is not None))


_spec_hashes: dict[bytes, str] = {}


def _spec_hash(spec: EvaluatorSpec) -> str:
    """spec.spec_hash(), remembered by the spec's JSON (equal JSON, equal spec): every case of a
    run carries the same few specs, and hashing their canonical form each time cost 3 µs a spec."""
    key = spec.__pydantic_serializer__.to_json(spec)
    found = _spec_hashes.get(key)
    if found is None:
        if len(_spec_hashes) >= 4096:
            _spec_hashes.clear()  # bounded; a service sees a handful of specs in practice
        found = _spec_hashes[key] = spec.spec_hash()
    return found


# Verdicts of the batched evaluators (the LLM judge) for a batch, by (case event id, spec index):
# a Score, None (nothing to score) or the exception that stopped it.
Judged = Mapping[tuple[str, int], "Score | None | BaseException"]


def score_case(env: Envelope, judged: Judged | None = None) -> Envelope:
    """Every evaluator in force on one case, as one `CaseScored` keyed by the run item; a failing
    evaluator is reported in it and the others carry on. Batched evaluators' verdicts come from
    `judged` (see score_cases); without them, such an evaluator fails with its reason."""
    case: ScoringCase = env.event  # type: ignore[assignment]
    if isinstance(case, ScoreRequested):
        request_id, observed_at = case.request_id, case.requested_at
    else:
        request_id, observed_at = None, case.completed_at  # type: ignore[attr-defined]
    run_item_id = case.run_item_id
    scores: list[CaseScore] = []
    failures: list[CaseFailure] = []
    for n, spec in enumerate(case.evaluators):
        evaluator = REGISTRY.get(spec.type)
        name = spec.score_name
        try:
            if evaluator is None:
                raise LookupError(f"unknown evaluator type {spec.type!r} (neither built in nor "
                                  "registered by this evaluator's EVALSTREAM_EVALUATOR_PLUGINS)")
            if judged is not None and (evaluator.batched or evaluator.threaded):
                score = judged[(env.id, n)]
                if isinstance(score, BaseException):
                    raise score
            else:
                score = evaluator.fn(case, spec)
            if score is not None:  # a score the contract refuses is that evaluator's failure too
                scores.append(CaseScore(
                    score_id=score_id(run_item_id, name, evaluator.source), name=name,
                    value=score.value, data_type=score.data_type, string_value=score.string_value,
                    source=evaluator.source, comment=score.comment, evaluator=spec.type,
                    evaluator_version=evaluator.version if score.model is None
                    else f"{evaluator.version}+{score.model}", spec_hash=_spec_hash(spec),
                    # Validated with the spec's other options by the evaluator just now.
                    pass_threshold=(spec.model_extra or {}).get("pass_threshold"),
                    input_tokens=score.input_tokens, output_tokens=score.output_tokens))
        except Exception as e:  # one evaluator's failure must not stop the others
            failures.append(CaseFailure(
                failure_id=deterministic_id("failure", run_item_id, name), name=name,
                evaluator=spec.type, evaluator_version=evaluator.version if evaluator else None,
                spec_hash=_spec_hash(spec), reason=f"{type(e).__name__}: {e}"))
    scored = CaseScored(
        run_item_id=run_item_id, run_id=case.run_id, dataset_item_id=case.dataset_item_id,
        trace_id=case.trace_id, request_id=request_id, observed_at=observed_at,
        scores=tuple(scores), failures=tuple(failures))
    # Keyed by the run item, as the case itself (docs/adr/0007); the id follows from the case's
    # event id, so a redelivered or replayed case yields the same event.
    return wrap(scored, source=SOURCE, key=run_item_id, time=observed_at,
                id=deterministic_id("case-scored-event", env.id))


def score_batch(envelopes: Iterable[Envelope]) -> list[Envelope]:
    """One `CaseScored` per scorable case, in the cases' order, with no judge at hand (a batched
    evaluator's scores become failures saying why)."""
    return [score_case(env) for env in envelopes if is_scorable(env.event)]


async def score_cases(envelopes: Iterable[Envelope], judge: LLMJudge,
                      async_settings: AsyncEvaluatorSettings | None = None) -> list[Envelope]:
    """score_batch, with the batched evaluators' cases of the whole batch scored at once before
    any case is assembled: the LLM judge's sent to `judge` (concurrently, up to its bound), and
    async plugins' called concurrently (services/evaluator/plugins.py: call_many), and plain
    plugin functions called in a thread off the event loop (call_in_thread), the three side by
    side. A batch with no such spec costs one registry lookup per spec more than score_batch.

    The judge is a model, not a pure function: a redelivered case keeps the verdict first applied
    (its CaseScored has the same id), and a replay asks the model again."""
    cases = [env for env in envelopes if is_scorable(env.event)]
    # (case, spec) pairs and their (case event id, spec index) slots: the judge's, async
    # plugins' and plain plugin functions'.
    judged_pairs, judged_slots, called_pairs, called_slots = [], [], [], []
    threaded_pairs, threaded_slots = [], []
    for env in cases:
        for n, spec in enumerate(env.event.evaluators):  # type: ignore[attr-defined]
            evaluator = REGISTRY.get(spec.type)
            if evaluator is None or not (evaluator.batched or evaluator.threaded):
                continue
            pairs, slots = ((threaded_pairs, threaded_slots) if evaluator.threaded
                            else (called_pairs, called_slots) if evaluator.call is not None
                            else (judged_pairs, judged_slots))
            pairs.append((env.event, spec))
            slots.append((env.id, n))
    if not (judged_pairs or called_pairs or threaded_pairs):
        return [score_case(env) for env in cases]
    settings = async_settings or AsyncEvaluatorSettings()
    results = await asyncio.gather(
        judge.judge_many(judged_pairs) if judged_pairs else _nothing(),
        call_many(called_pairs, settings) if called_pairs else _nothing(),
        call_in_thread(threaded_pairs, settings) if threaded_pairs else _nothing())
    judged: dict = {}
    for slots, verdicts in zip((judged_slots, called_slots, threaded_slots), results,
                               strict=True):
        judged.update(zip(slots, verdicts, strict=True))
    return [score_case(env, judged) for env in cases]


async def _nothing() -> list:
    return []
