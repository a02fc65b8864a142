"""Rescoring without infrastructure: a logged trace becomes a self-contained score request, the
same log rescored twice gives the same score ids and values, each requested case reports its
completion, and evaluator files and replay filters say exactly what they accept."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from schemas.common import EvaluatorSpec
from schemas.envelope import wrap
from schemas.rescoring import ScoringCompleted
from schemas.scores import EvaluationFailed, ScoreRecorded
from schemas.traces import ScoreRequested, TraceCompleted
from services.evaluator.scoring import score_case
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


def _scores(envelopes) -> dict[str, tuple]:
    return {e.event.score_id: (e.event.name, e.event.value, e.event.evaluator_version)
            for e in envelopes if isinstance(e.event, ScoreRecorded)}


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
    assert [(e.id, e.body()) for e in first] == [(e.id, e.body()) for e in again]
    # Another replay is another request (new event ids) with the same score ids and values,
    # which are the trace's own.
    assert _scores(first) == _scores(other) == original
    assert {e.id for e in first}.isdisjoint(e.id for e in other)
    assert all(e.event.request_id == "q1" and e.event.observed_at == LATER
               for e in first if isinstance(e.event, ScoreRecorded))


def test_every_requested_case_reports_its_completion_after_its_scores():
    specs = (EvaluatorSpec(type="exact_match"), EvaluatorSpec(type="no_such_type"),
             EvaluatorSpec(type="json_structure"))  # no keys to require: no score
    out = score_case(score_request(_trace_env(evaluators=specs), "q1", LATER, None))
    assert [type(e.event) for e in out] == [ScoreRecorded, EvaluationFailed, ScoringCompleted]
    done: ScoringCompleted = out[-1].event
    assert (done.request_id, done.scored, done.failed, done.run_id) == ("q1", 1, 1, "r1")
    # on the same key as the case's scores, hence after them on their partition
    assert done.run_item_id == out[0].event.run_item_id
    assert {e.key for e in out} == {done.run_item_id}
    # Nothing to score (no expected output) still completes the case.
    blank = score_case(score_request(_trace_env(expected_output=None,
                                                evaluators=SPECS[:1]), "q1", LATER, None))
    assert [(e.event.scored, e.event.failed) for e in blank] == [(0, 0)]
    # A trace is not a request: no completion event.
    assert not any(isinstance(e.event, ScoringCompleted) for e in score_case(_trace_env()))


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
