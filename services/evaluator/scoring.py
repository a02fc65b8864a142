"""Turns scoring cases (finished traces, score requests) into score events: a pure function of the
event and the evaluator specs it carries, so any instance can score any partition and a replay of
the same events yields the same score ids, values and event ids."""

from __future__ import annotations

from collections.abc import Iterable

from schemas.common import EvaluatorSpec, deterministic_id, score_id
from schemas.envelope import Envelope, wrap
from schemas.rescoring import ScoringCompleted
from schemas.scores import EvaluationFailed, ScoreRecorded
from schemas.traces import ScoreRequested, ScoringCase, TraceCompleted
from services.evaluator.evaluators import REGISTRY

SOURCE = "evalstream/evaluator"


def is_scorable(event: object) -> bool:
    """Succeeded traces and every score request are scored; failed traces are not."""
    return isinstance(event, ScoreRequested) or (
        isinstance(event, TraceCompleted) and event.status == "succeeded")


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


def score_case(env: Envelope) -> list[Envelope]:
    """Every evaluator in force on one case; a failing evaluator yields EvaluationFailed and the
    others carry on."""
    case: ScoringCase = env.event  # type: ignore[assignment]
    if isinstance(case, ScoreRequested):
        request_id, observed_at = case.request_id, case.requested_at
    else:
        request_id, observed_at = None, case.completed_at  # type: ignore[attr-defined]
    run_item_id = case.run_item_id
    key = run_item_id  # the case's scores, then its ScoringCompleted, on one partition
    out: list[Envelope] = []
    for spec in case.evaluators:
        evaluator = REGISTRY.get(spec.type)
        name = spec.score_name
        spec_hash = _spec_hash(spec)
        try:
            if evaluator is None:
                raise LookupError(f"unknown evaluator type {spec.type!r}")
            score = evaluator.fn(case, spec)
        except Exception as e:  # one evaluator's failure must not stop the others
            failure_id = deterministic_id("failure", run_item_id, name)
            failed = EvaluationFailed(
                failure_id=failure_id, run_item_id=run_item_id, run_id=case.run_id,
                dataset_item_id=case.dataset_item_id, trace_id=case.trace_id, name=name,
                evaluator=spec.type, evaluator_version=evaluator.version if evaluator else None,
                spec_hash=spec_hash, reason=f"{type(e).__name__}: {e}", request_id=request_id,
                observed_at=observed_at)
            out.append(wrap(failed, source=SOURCE, key=key, time=observed_at,
                            id=deterministic_id("failure-event", env.id, failure_id)))
            continue
        if score is None:
            continue
        sid = score_id(run_item_id, name, evaluator.source)
        recorded = ScoreRecorded(
            score_id=sid, run_item_id=run_item_id, run_id=case.run_id,
            dataset_item_id=case.dataset_item_id, trace_id=case.trace_id, name=name,
            value=score.value, data_type=score.data_type, string_value=score.string_value,
            source=evaluator.source, comment=score.comment, evaluator=spec.type,
            evaluator_version=evaluator.version, spec_hash=spec_hash, request_id=request_id,
            observed_at=observed_at)
        out.append(wrap(recorded, source=SOURCE, key=key, time=observed_at,
                        id=deterministic_id("score-event", env.id, sid)))
    if request_id is not None:
        # Published after the case's scores on the same key (so the same partition): once the
        # projections count it, the case's scores are there too. A case may legitimately yield
        # no score at all, which is why completion is an event of its own.
        failed = sum(isinstance(e.event, EvaluationFailed) for e in out)
        completed = ScoringCompleted(
            request_id=request_id, run_item_id=run_item_id, run_id=case.run_id,
            trace_id=case.trace_id, scored=len(out) - failed, failed=failed,
            observed_at=observed_at)
        out.append(wrap(completed, source=SOURCE, key=key, time=observed_at,
                        id=deterministic_id("scoring-completed-event", env.id)))
    return out


def score_batch(envelopes: Iterable[Envelope]) -> list[Envelope]:
    out: list[Envelope] = []
    for env in envelopes:
        if is_scorable(env.event):
            out.extend(score_case(env))
    return out
