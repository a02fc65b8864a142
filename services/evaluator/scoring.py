"""Turns scoring cases (finished traces, score requests) into `CaseScored` events: a pure function
of the event and the evaluator specs it carries, so any instance can score any partition and a
replay of the same events yields the same score ids, values and event ids.

One event per case, not one per score (docs/adr/0008): a case's scores, failures and, for a score
request, its completion arrive together, and each trace costs two Kafka records instead of four."""

from __future__ import annotations

from collections.abc import Iterable

from schemas.common import EvaluatorSpec, deterministic_id, score_id
from schemas.envelope import Envelope, wrap
from schemas.scores import CaseFailure, CaseScore, CaseScored
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


def score_case(env: Envelope) -> Envelope:
    """Every evaluator in force on one case, as one `CaseScored` keyed by the run item; a failing
    evaluator is reported in it and the others carry on."""
    case: ScoringCase = env.event  # type: ignore[assignment]
    if isinstance(case, ScoreRequested):
        request_id, observed_at = case.request_id, case.requested_at
    else:
        request_id, observed_at = None, case.completed_at  # type: ignore[attr-defined]
    run_item_id = case.run_item_id
    scores: list[CaseScore] = []
    failures: list[CaseFailure] = []
    for spec in case.evaluators:
        evaluator = REGISTRY.get(spec.type)
        name = spec.score_name
        try:
            if evaluator is None:
                raise LookupError(f"unknown evaluator type {spec.type!r}")
            score = evaluator.fn(case, spec)
        except Exception as e:  # one evaluator's failure must not stop the others
            failures.append(CaseFailure(
                failure_id=deterministic_id("failure", run_item_id, name), name=name,
                evaluator=spec.type, evaluator_version=evaluator.version if evaluator else None,
                spec_hash=_spec_hash(spec), reason=f"{type(e).__name__}: {e}"))
            continue
        if score is not None:
            scores.append(CaseScore(
                score_id=score_id(run_item_id, name, evaluator.source), name=name,
                value=score.value, data_type=score.data_type, string_value=score.string_value,
                source=evaluator.source, comment=score.comment, evaluator=spec.type,
                evaluator_version=evaluator.version, spec_hash=_spec_hash(spec)))
    scored = CaseScored(
        run_item_id=run_item_id, run_id=case.run_id, dataset_item_id=case.dataset_item_id,
        trace_id=case.trace_id, request_id=request_id, observed_at=observed_at,
        scores=tuple(scores), failures=tuple(failures))
    # Keyed by the run item, as the case itself (docs/adr/0007); the id follows from the case's
    # event id, so a redelivered or replayed case yields the same event.
    return wrap(scored, source=SOURCE, key=run_item_id, time=observed_at,
                id=deterministic_id("case-scored-event", env.id))


def score_batch(envelopes: Iterable[Envelope]) -> list[Envelope]:
    """One `CaseScored` per scorable case, in the cases' order."""
    return [score_case(env) for env in envelopes if is_scorable(env.event)]
