"""Rescoring without infrastructure: a logged trace becomes a self-contained score request, the
same log rescored twice gives the same score ids and values, each requested case reports its
completion, and evaluator files and replay filters say exactly what they accept."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from schemas.common import EvaluatorSpec, utcnow
from schemas.envelope import wrap
from schemas.scores import CaseScored
from schemas.traces import ScoreRequested, TraceCompleted
from services.evaluator.scoring import score_case
from services.ingest.scoring_rules import Rule
from services.replay import ReplayFilter, SpecFileError, load_specs, parse_since, score_request

AT = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
LATER = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
SPECS = (EvaluatorSpec(type="exact_match"),
         EvaluatorSpec(type="contains", name="city", keywords=["paris", "lyon"]))


def _trace_env(**kw):
    trace = TraceCompleted(**{"trace_id": "t1", "run_id": "r1", "dataset_id": "d1",
                              "dataset_item_id": "i1", "input": {"q": "?"}, "output": "Paris",
                              "expected_output": "Paris", "status": "succeeded",
                              "completed_at": AT, "evaluators": SPECS, **kw})
    return wrap(trace, source="ingest", key=trace.run_item_id, id="trace-event-1")


def _scores(env) -> dict[str, tuple]:
    return {s.score_id: (s.name, s.value, s.evaluator_version) for s in env.event.scores}


def test_a_logged_trace_becomes_a_self_contained_request():
    env = score_request(_trace_env(), "q1", LATER, None)
    request: ScoreRequested = env.event
    assert (request.trace_id, request.run_id, request.dataset_id, request.dataset_item_id) == (
        "t1", "r1", "d1", "i1")
    assert (request.input, request.output, request.expected_output) == ({"q": "?"}, "Paris",
                                                                         "Paris")
    assert request.evaluators == SPECS and request.requested_at == LATER
    assert env.key == request.run_item_id and env.time == LATER  # keyed by run item (ADR 0007)
    given = (EvaluatorSpec(type="contains", keywords=["lyon"]),)
    assert score_request(_trace_env(), "q1", LATER, given).event.evaluators == given
    outside = score_request(_trace_env(run_id=None, dataset_item_id=None), "q1", LATER, None)
    assert outside.key == outside.event.run_item_id != request.run_item_id


def test_rescoring_the_same_log_twice_gives_the_same_score_ids_and_values():
    trace = _trace_env()
    original = _scores(score_case(trace))
    first = score_case(score_request(trace, "q1", LATER, None))
    again = score_case(score_request(trace, "q1", LATER, None))
    other = score_case(score_request(trace, "q2", LATER, None))
    # The same request is the same facts, byte for byte.
    assert (first.id, first.body()) == (again.id, again.body())
    # Another replay is another request (a new event id) with the same score ids and values,
    # which are the trace's own.
    assert _scores(first) == _scores(other) == original and len(original) == 2
    assert first.id != other.id
    assert (first.event.request_id, first.event.observed_at) == ("q1", LATER)


def test_every_requested_case_reports_its_scores_failures_and_completion_at_once():
    specs = (EvaluatorSpec(type="exact_match"), EvaluatorSpec(type="no_such_type"),
             EvaluatorSpec(type="json_structure"))  # no keys to require: no score
    out = score_case(score_request(_trace_env(evaluators=specs), "q1", LATER, None))
    done: CaseScored = out.event
    assert (done.request_id, len(done.scores), len(done.failures), done.run_id) == (
        "q1", 1, 1, "r1")
    assert out.key == done.run_item_id
    # Nothing to score (no expected output) still completes the case.
    blank = score_case(score_request(_trace_env(expected_output=None,
                                                evaluators=SPECS[:1]), "q1", LATER, None))
    assert (blank.event.request_id, blank.event.scores, blank.event.failures) == ("q1", (), ())
    # A trace is not a request.
    assert score_case(_trace_env()).event.request_id is None


def test_filters_must_all_match_and_ids_of_one_kind_are_alternatives():
    trace = _trace_env().event
    assert ReplayFilter().matches(trace)
    assert ReplayFilter(run_ids=frozenset({"r1", "r9"}), dataset_ids=frozenset({"d1"}),
                        trace_ids=frozenset({"t1"}), since=AT).matches(trace)
    assert not ReplayFilter(run_ids=frozenset({"r1"}), dataset_ids=frozenset({"d9"})).matches(
        trace)
    assert not ReplayFilter(since=LATER).matches(trace)
    assert not ReplayFilter().matches(_trace_env(status="failed").event)  # never scored
    assert parse_since("2026-11-22T10:00:00") == AT  # no zone: UTC
    assert parse_since("2026-11-22T11:00:00+01:00") == AT
    assert abs((utcnow() - parse_since("7d")).total_seconds() - 7 * 86400) < 60


def test_production_traces_and_a_rules_selection():
    run_trace = _trace_env().event
    production = _trace_env(run_id=None, dataset_item_id=None,
                            metadata={"env": "prod"}).event
    of_item = _trace_env(run_id=None, metadata={"env": "prod"}).event
    assert [ReplayFilter(outside_runs=True).matches(t) for t in (run_trace, production, of_item)] \
        == [False, True, True]
    everything = Rule("r", (EvaluatorSpec(type="exact_match"),), 1.0, {"env": "prod"})
    assert [ReplayFilter(rule=everything).matches(t) for t in (run_trace, production, of_item)] \
        == [False, True, False]  # a rule selects traces outside runs and datasets only
    assert not ReplayFilter(rule=Rule("r", everything.evaluators, 1.0, {"env": "dev"})).matches(
        production)
    assert ReplayFilter(outside_runs=True, rule_name="r").describe() == {
        "outside_runs": True, "rule": "r"}


def test_evaluator_files_in_json_or_yaml(tmp_path):
    (tmp_path / "e.json").write_text('[{"type": "contains", "keywords": ["paris"]}]')
    (tmp_path / "e.yaml").write_text("evaluators:\n  - type: exact_match\n"
                                     "  - type: contains\n    name: city\n"
                                     "    keywords: [paris]\n")
    assert load_specs(tmp_path / "e.json")[0].options == {"keywords": ["paris"]}
    assert [s.score_name for s in load_specs(tmp_path / "e.yaml")] == ["exact_match", "city"]


@pytest.mark.parametrize("text,message", [
    ('[{"type": "contains", "keywords": "paris"}]', "[0].keywords"),
    ('[{"type": "exact_match"}, {"type": "nope"}]', "[1].type"),
    ('[{"type": "exact_match"}, {"type": "exact_match"}]', "same score name"),
    ("[]", "non-empty list"),
    ("{not: [yaml", "e.txt"),
])
def test_bad_evaluator_files_say_where(tmp_path, text, message):
    (tmp_path / "e.txt").write_text(text)
    with pytest.raises(SpecFileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_specs(tmp_path / "e.txt")
