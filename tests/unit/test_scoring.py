"""Scoring a case: pure, deterministic, and one failing evaluator never stops the others."""

from __future__ import annotations

from datetime import UTC, datetime

from schemas.common import EvaluatorSpec, score_id
from schemas.envelope import wrap
from schemas.scores import EvaluationFailed, ScoreRecorded
from schemas.traces import ScoreRequested, TraceCompleted
from services.evaluator.scoring import score_batch, score_case

AT = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
SPECS = (EvaluatorSpec(type="exact_match"),
         EvaluatorSpec(type="contains", name="has_city", keywords=["paris", "lyon"]),
         EvaluatorSpec(type="json_structure"))  # no required keys, string expected: no score


def _trace(**kw) -> TraceCompleted:
    return TraceCompleted(**{"trace_id": "t1", "run_id": "r1", "dataset_item_id": "i1",
                             "output": "Paris", "expected_output": "Paris",
                             "status": "succeeded", "completed_at": AT, "evaluators": SPECS,
                             **kw})


def test_scores_every_evaluator_that_has_something_to_say():
    out = score_case(wrap(_trace(), source="t", key="r1", id="e1"))
    events = {e.event.name: e.event for e in out}
    assert set(events) == {"exact_match", "has_city"}
    assert events["exact_match"].value == 1.0 and events["exact_match"].data_type == "boolean"
    assert events["has_city"].value == 0.5
    sm = events["has_city"]
    assert isinstance(sm, ScoreRecorded)
    assert sm.score_id == score_id(_trace().run_item_id, "has_city", "programmatic")
    assert (sm.evaluator, sm.evaluator_version) == ("contains", "1")
    assert sm.spec_hash == SPECS[1].spec_hash() and sm.observed_at == AT
    assert all(e.key == _trace().run_item_id for e in out)  # keyed by run item (ADR 0007)


def test_same_event_scores_to_identical_events():
    env = wrap(_trace(), source="t", key="r1", id="e1")
    first = [(e.id, e.body()) for e in score_case(env)]
    second = [(e.id, e.body()) for e in score_case(env)]
    assert first == second
    other = [e.id for e in score_case(wrap(_trace(), source="t", key="r1", id="e2"))]
    assert set(other).isdisjoint(i for i, _ in first)  # another event is another fact


def test_a_failing_evaluator_does_not_stop_the_others():
    specs = (EvaluatorSpec(type="missing_type"), EvaluatorSpec(type="exact_match"))
    out = score_case(wrap(_trace(evaluators=specs), source="t", key="r1", id="e1"))
    failed = [e.event for e in out if isinstance(e.event, EvaluationFailed)]
    scored = [e.event for e in out if isinstance(e.event, ScoreRecorded)]
    assert [f.name for f in failed] == ["missing_type"]
    assert "unknown evaluator type" in failed[0].reason
    assert [s.name for s in scored] == ["exact_match"]


def test_failed_traces_are_not_scored_and_requests_are():
    failed = wrap(_trace(status="failed"), source="t", key="r1", id="e1")
    request = ScoreRequested(trace_id="t1", run_id="r1", dataset_item_id="i1", output="Paris",
                             expected_output="Paris", evaluators=SPECS[:1], request_id="q1",
                             requested_at=AT)
    out = score_batch([failed, wrap(request, source="t", key="r1", id="e2")])
    scores = [e.event for e in out if isinstance(e.event, ScoreRecorded)]
    assert len(scores) == 1 and scores[0].request_id == "q1"


def test_trace_outside_a_run_is_keyed_by_its_own_run_item():
    out = score_case(wrap(_trace(run_id=None, dataset_item_id=None), source="t", key=None,
                          id="e1"))
    outside = _trace(run_id=None, dataset_item_id=None).run_item_id
    assert out and all(e.key == outside != _trace().run_item_id for e in out)
