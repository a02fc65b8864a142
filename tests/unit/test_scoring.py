"""Scoring a case: pure, deterministic, and one failing evaluator never stops the others."""

from __future__ import annotations

from datetime import UTC, datetime

from schemas.common import EvaluatorSpec, deterministic_id, score_id
from schemas.envelope import wrap
from schemas.scores import CaseScored
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
    env = score_case(wrap(_trace(), source="t", key="r1", id="e1"))
    case = env.event
    assert isinstance(case, CaseScored)
    scores = {s.name: s for s in case.scores}
    assert set(scores) == {"exact_match", "has_city"} and case.failures == ()
    assert scores["exact_match"].value == 1.0 and scores["exact_match"].data_type == "boolean"
    assert scores["has_city"].value == 0.5
    sm = scores["has_city"]
    assert sm.score_id == score_id(_trace().run_item_id, "has_city", "programmatic")
    assert (sm.evaluator, sm.evaluator_version) == ("contains", "1")
    assert sm.spec_hash == SPECS[1].spec_hash() and case.observed_at == AT
    assert (case.run_item_id, case.run_id, case.trace_id, case.request_id) == (
        _trace().run_item_id, "r1", "t1", None)
    assert env.key == _trace().run_item_id  # keyed by run item (ADR 0007)


def test_same_event_scores_to_identical_events():
    env = wrap(_trace(), source="t", key="r1", id="e1")
    first, second = score_case(env), score_case(env)
    assert (first.id, first.body()) == (second.id, second.body())
    other = score_case(wrap(_trace(), source="t", key="r1", id="e2"))
    assert other.id != first.id  # another event is another fact


def test_a_failing_evaluator_does_not_stop_the_others():
    specs = (EvaluatorSpec(type="missing_type"), EvaluatorSpec(type="exact_match"))
    case = score_case(wrap(_trace(evaluators=specs), source="t", key="r1", id="e1")).event
    assert [f.name for f in case.failures] == ["missing_type"]
    assert "unknown evaluator type" in case.failures[0].reason
    assert case.failures[0].failure_id == deterministic_id("failure", case.run_item_id,
                                                           "missing_type")
    assert [s.name for s in case.scores] == ["exact_match"]


def test_failed_traces_are_not_scored_and_requests_are():
    failed = wrap(_trace(status="failed"), source="t", key="r1", id="e1")
    request = ScoreRequested(trace_id="t1", run_id="r1", dataset_item_id="i1", output="Paris",
                             expected_output="Paris", evaluators=SPECS[:1], request_id="q1",
                             requested_at=AT)
    out = score_batch([failed, wrap(request, source="t", key="r1", id="e2")])
    assert [e.event.request_id for e in out] == ["q1"]
    assert [s.name for s in out[0].event.scores] == ["exact_match"]


def test_a_case_with_nothing_to_score_still_yields_its_event():
    case = score_case(wrap(_trace(expected_output=None, evaluators=SPECS[:1]), source="t",
                           key="r1", id="e1")).event
    assert (case.scores, case.failures) == ((), ())


def test_trace_outside_a_run_is_keyed_by_its_own_run_item():
    out = score_case(wrap(_trace(run_id=None, dataset_item_id=None), source="t", key=None,
                          id="e1"))
    outside = _trace(run_id=None, dataset_item_id=None).run_item_id
    assert out.key == outside != _trace().run_item_id


def test_an_evaluator_returning_what_the_contract_refuses_is_a_failure(monkeypatch):
    from services.evaluator import evaluators

    broken = evaluators.Evaluator("broken", "1", lambda case, spec: evaluators.Score(
        0.5, "percent"), evaluators.ExactMatchOptions)  # type: ignore[arg-type]
    monkeypatch.setitem(evaluators.REGISTRY, "broken", broken)
    specs = (EvaluatorSpec(type="broken"), EvaluatorSpec(type="exact_match"))
    case = score_case(wrap(_trace(evaluators=specs), source="t", key="r1", id="e1")).event
    assert [s.name for s in case.scores] == ["exact_match"]
    assert [f.name for f in case.failures] == ["broken"]
    assert "ValidationError" in case.failures[0].reason and "data_type" in case.failures[0].reason


def test_a_judged_score_names_its_model_in_its_version():
    from services.evaluator.evaluators import Score

    specs = (EvaluatorSpec(type="exact_match"),
             EvaluatorSpec(type="llm_judge", name="judged", criteria="Right city?"))
    env = wrap(_trace(evaluators=specs), source="t", key="r1", id="e1")
    judged = {("e1", 1): Score(1.0, "boolean", comment="Paris.", model="m-2026-11-01")}
    scores = {s.name: s for s in score_case(env, judged).event.scores}
    assert (scores["judged"].evaluator, scores["judged"].evaluator_version,
            scores["judged"].source) == ("llm_judge", "1+m-2026-11-01", "llm_judge")
    assert scores["exact_match"].evaluator_version == "1"


def test_a_spec_pass_threshold_rides_on_its_scores():
    specs = (EvaluatorSpec(type="similarity", pass_threshold=0.9),
             EvaluatorSpec(type="exact_match"))
    scores = {s.name: s for s in score_case(
        wrap(_trace(evaluators=specs), source="t", key="r1", id="e1")).event.scores}
    assert (scores["similarity"].pass_threshold, scores["exact_match"].pass_threshold) == (
        0.9, None)
    # Out of range: that evaluator's failure, naming the option; the others score.
    bad = score_case(wrap(_trace(evaluators=(
        EvaluatorSpec(type="similarity", pass_threshold=2), EvaluatorSpec(type="exact_match"))),
        source="t", key="r1", id="e2")).event
    assert [s.name for s in bad.scores] == ["exact_match"]
    assert "pass_threshold" in bad.failures[0].reason


def test_a_trace_outside_runs_with_no_spec_is_not_reported_on():
    """Production traffic no scoring rule selected: no CaseScored (nobody waits for it); a run's
    trace is always reported on, and a failed trace never."""
    envs = [wrap(_trace(trace_id=t, run_id=run, dataset_item_id=None, evaluators=specs,
                        status=status), source="t", key=t, id=f"e-{t}")
            for t, run, specs, status in [("prod-none", None, (), "succeeded"),
                                          ("prod-ruled", None, SPECS, "succeeded"),
                                          ("run-none", "r1", (), "succeeded"),
                                          ("prod-failed", None, SPECS, "failed")]]
    assert [e.event.trace_id for e in score_batch(envs)] == ["prod-ruled", "run-none"]
