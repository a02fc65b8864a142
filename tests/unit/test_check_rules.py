"""`evalstream check`'s rules on the query API's answers: when a run counts as scored, and which
thresholds hold (the command against the running services: tests/e2e/test_check.py)."""

from __future__ import annotations

import pytest

from services.check import (
    NOT_FOUND_GRACE_S,
    CheckError,
    check_run,
    evaluate,
    holm,
    parse_minimum,
    waiting_for,
)


def _summary(**kw) -> dict:
    return {"id": "r2", "name": "v2", "pass_rate": 0.75, "evaluation_failures": 2,
            "scores": {"exact_match": {"pass_rate": 0.5}, "contains": {"pass_rate": 1.0}}, **kw}


def _scoring(**kw) -> dict:
    return {"run_id": "r2", "total_items": 4, "traced_items": 4, "missing_items": 0,
            "missing_items_at_start": 0, "items_pending_scoring": 0, "scored": True, **kw}


def test_a_run_is_scored_once_every_item_has_a_trace_and_every_trace_a_report():
    assert waiting_for(_scoring(), None) is None
    assert waiting_for(_scoring(traced_items=2, missing_items=2, missing_items_at_start=2),
                       None) == "2 item(s) of the dataset have no trace yet"
    assert waiting_for(_scoring(items_pending_scoring=1), None) == "1 item(s) are being scored"
    # items added to the dataset after the run started are not waited for
    assert waiting_for(_scoring(traced_items=4, missing_items=2), None) is None
    assert waiting_for(_scoring(traced_items=3, missing_items=3, missing_items_at_start=1),
                       None) == "1 item(s) of the dataset have no trace yet"
    # --items: that many traced items, whatever the dataset holds
    assert waiting_for(_scoring(traced_items=4, missing_items=2), 4) is None
    assert waiting_for(_scoring(traced_items=4, missing_items=2), 5) == (
        "4 of 5 items have a trace")


def test_pass_rates_are_checked_overall_and_per_score():
    checks = evaluate(_summary(), min_pass_rate=0.7,
                      minimums={"exact_match": 0.6, "contains": 1.0, "tone": 0.5})
    assert [(c.what, c.value, c.passed) for c in checks] == [
        ("pass rate", 0.75, True), ("exact_match pass rate", 0.5, False),
        ("contains pass rate", 1.0, True), ("tone pass rate", None, False)]
    assert checks[1].describe() == "exact_match pass rate: 0.5 < 0.6"
    assert checks[3].describe() == "tone pass rate: none (needs 0.5)"
    # a run with no boolean or numeric score has no pass rate: it does not pass
    assert not evaluate(_summary(pass_rate=None), min_pass_rate=0.0, minimums={})[0].passed


def test_with_a_breakdown_the_pass_rates_hold_in_every_group():
    groups = [{"value": "math", "pass_rate": 0.9, "scores": {"exact_match": {"pass_rate": 0.8}}},
              {"value": 3, "pass_rate": 0.4, "scores": {"exact_match": {"pass_rate": 0.4}}},
              {"value": None, "pass_rate": None, "scores": {}}]  # every trace failed
    checks = evaluate(_summary(), min_pass_rate=0.5, minimums={"exact_match": 0.5},
                      by="item.category", groups=groups)
    assert [(c.what, c.value, c.passed) for c in checks] == [
        ("pass rate", 0.75, True), ("exact_match pass rate", 0.5, True),
        ("pass rate of item.category=math", 0.9, True),
        ("exact_match pass rate of item.category=math", 0.8, True),
        ("pass rate of item.category=3", 0.4, False),
        ("exact_match pass rate of item.category=3", 0.4, False),
        # a group without the score is not checked on it; one with no pass rate fails
        ("pass rate of item.category=(none)", None, False)]


def test_regressions_against_the_baseline_are_counted_per_score():
    comparison = {"scores": [
        {"name": "contains", "runs": [{"run_id": "r1", "regressions": None},
                                      {"run_id": "r2", "regressions": 0}]},
        {"name": "exact_match", "runs": [{"run_id": "r1", "regressions": None},
                                         {"run_id": "r2", "regressions": 3}]}]}
    checks = evaluate(_summary(), min_pass_rate=None, minimums={}, comparison=comparison,
                      max_regressions=2)
    assert [(c.what, c.value, c.passed) for c in checks] == [
        ("contains items regressed", 0, True), ("exact_match items regressed", 3, False)]
    assert checks[1].describe() == "exact_match items regressed: 3 > 2"


def _compared(p_values: dict[str, float | None]) -> dict:
    return {"scores": [{"name": name, "runs": [
        {"run_id": "r1", "paired": None},
        {"run_id": "r2", "regressions": 5, "paired": {"p_pass_rate_fell": p}}]}
        for name, p in p_values.items()]}


def test_with_significant_a_score_fails_only_on_a_drop_beyond_chance():
    comparison = _compared({"contains": 0.2,  # could be chance
                            "exact_match": 0.004,  # a real drop, even counted twice
                            "judge": None})  # one item paired: no test
    comparison["scores"].append({"name": "tone", "runs": [{"run_id": "r1"},
                                                          {"run_id": "r2", "regressions": 0}]})
    checks = evaluate(_summary(), min_pass_rate=None, minimums={}, comparison=comparison,
                      significant=True)
    assert [(c.what, c.value, c.passed) for c in checks] == [
        ("contains pass rate fell: p-value, Holm-adjusted over 2 score(s)", 0.2, True),
        ("exact_match pass rate fell: p-value, Holm-adjusted over 2 score(s)", 0.008, False)]
    assert checks[1].describe() == \
        "exact_match pass rate fell: p-value, Holm-adjusted over 2 score(s): 0.008 < 0.025"


def test_several_scores_at_once_do_not_cry_wolf_more_often():
    """Three scores, each alone below 0.025 or near it: together, Holm's adjustment (0.01 x 3,
    then 0.02 x 2, then 0.03 x 1, each at least the one before) passes them all; one score alone
    at 0.01 fails, as its 95% interval would."""
    checks = evaluate(_summary(), min_pass_rate=None, minimums={}, significant=True,
                      comparison=_compared({"a": 0.02, "b": 0.01, "c": 0.03}))
    assert [(c.what.split()[0], c.value, c.passed) for c in checks] == [
        ("a", 0.04, True), ("b", 0.03, True), ("c", 0.04, True)]
    [alone] = evaluate(_summary(), min_pass_rate=None, minimums={}, significant=True,
                       comparison=_compared({"b": 0.01}))
    assert (alone.value, alone.passed) == (0.01, False)
    assert holm({"x": 0.5, "y": 0.4}) == {"x": 0.8, "y": 0.8}  # never above 1, never falls
    assert holm({}) == {}


def test_evaluator_failures_are_bounded_when_asked():
    assert evaluate(_summary(), min_pass_rate=None, minimums={}) == []
    [failures] = evaluate(_summary(), min_pass_rate=None, minimums={}, max_failures=1)
    assert (failures.what, failures.value, failures.passed) == ("evaluator failures", 2, False)
    assert failures.describe() == "evaluator failures: 2 > 1"
    assert evaluate(_summary(), min_pass_rate=None, minimums={}, max_failures=2)[0].passed


@pytest.mark.parametrize("text", ["exact_match", "=0.5", "x=1.5", "x=high"])
def test_a_wrong_minimum_is_refused(text):
    with pytest.raises(ValueError, match="expected <score name>=<pass rate"):
        parse_minimum(text)


def test_a_name_may_hold_an_equals_sign():
    assert parse_minimum("a=b=0.25") == ("a=b", 0.25)


class _Api:
    """The query API's answers: the scoring states (or errors) in turn, the last one staying,
    and a summary."""

    def __init__(self, states: list):
        self.states, self.asked = states, 0

    def scoring(self, run_id: str) -> dict:
        self.asked += 1
        state = self.states[min(self.asked, len(self.states)) - 1]
        if isinstance(state, Exception):
            raise state
        return state

    def summary(self, run_id: str) -> dict:
        return _summary()


def test_the_check_waits_for_scoring_then_decides():
    api = _Api([_scoring(traced_items=3, missing_items=1, missing_items_at_start=1),
                _scoring(items_pending_scoring=2),
                _scoring()])
    seen = []
    report = check_run(api, "r2", min_pass_rate=0.7, wait=10, sleep=lambda _: None,
                       on_wait=seen.append)
    assert api.asked == 3 and report.passed and report.items == 4
    assert seen == ["1 item(s) of the dataset have no trace yet", "2 item(s) are being scored"]


def test_a_run_still_being_scored_when_the_wait_is_over_is_undecided():
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(CheckError, match=r"not scored after 3 s: 2 item\(s\) are being scored"):
        check_run(_Api([_scoring(items_pending_scoring=2)]), "r2", wait=3, sleep=sleep,
                  clock=lambda: now[0])


class _Clock:
    def __init__(self):
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_an_api_that_cannot_answer_yet_is_asked_again_within_the_wait():
    clock = _Clock()
    down = CheckError("query API at http://x unreachable: refused", "unavailable")
    api = _Api([down, CheckError("/v1/runs/r2/scoring: HTTP 503: busy", "unavailable"),
                _scoring()])
    report = check_run(api, "r2", min_pass_rate=0.5, wait=10, sleep=clock.sleep,
                       clock=lambda: clock.now)
    assert report.passed and api.asked == 3
    with pytest.raises(CheckError, match="not scored after 5 s: query API .* unreachable"):
        check_run(_Api([down]), "r2", wait=5, sleep=clock.sleep, clock=lambda: clock.now)


def test_a_run_not_found_is_believed_after_a_grace_a_wrong_key_at_once():
    clock = _Clock()
    missing = CheckError("/v1/runs/r2/scoring: run r2 not found", "not_found")
    # Created a moment ago: found on the third asking.
    assert check_run(_Api([missing, missing, _scoring()]), "r2", wait=300, sleep=clock.sleep,
                     clock=lambda: clock.now).passed
    clock.now = 0.0
    api = _Api([missing])
    with pytest.raises(CheckError, match="run r2 not found") as raised:
        check_run(api, "r2", wait=300, sleep=clock.sleep, clock=lambda: clock.now)
    assert raised.value.kind == "not_found" and clock.now == pytest.approx(NOT_FOUND_GRACE_S)
    api = _Api([CheckError("/v1/runs/r2/scoring: HTTP 401: bad key")])
    with pytest.raises(CheckError, match="401"):
        check_run(api, "r2", wait=300, sleep=clock.sleep, clock=lambda: clock.now)
    assert api.asked == 1


@pytest.mark.parametrize(("status", "kind"), [(401, "refused"), (500, "refused"),
                                              (503, "unavailable"), (504, "unavailable")])
def test_which_answers_are_worth_asking_again(status, kind):
    import httpx

    from services.client import ApiError, QueryApi

    api = QueryApi("http://query", None)
    api._client = httpx.Client(base_url="http://query", transport=httpx.MockTransport(
        lambda request: httpx.Response(status, text="no")))
    with pytest.raises(ApiError) as raised:
        api.scoring("r2")
    assert raised.value.kind == kind


def test_a_rescore_waits_past_a_request_not_yet_projected_until_done_or_the_wait_is_over():
    from services.client import ApiError
    from services.rescore import wait

    class Progress:
        def __init__(self, answers):
            self.answers = list(answers)

        def get(self, path):
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

    not_yet = ApiError("/v1/score-requests/q: request q not found", "not_found")
    half = {"requested": 4, "completed": 2, "done": False}
    done = {"requested": 4, "completed": 4, "done": True}
    seen: list[int] = []
    api = Progress([not_yet, half, done])
    assert wait(api, "q", within=10, sleep=lambda _: None,
                on_progress=lambda p: seen.append(p["completed"])) == done
    assert seen == [2, 4]

    clock = iter(range(100))
    with pytest.raises(ApiError, match="request q not done after 3 s: 2 of 4 cases done"):
        wait(Progress([half] * 10), "q", within=3, sleep=lambda _: None,
             clock=lambda: next(clock))
    with pytest.raises(ApiError, match="401"):  # a wrong key is not waited out
        wait(Progress([ApiError("HTTP 401: bad key")]), "q", within=3, sleep=lambda _: None)
