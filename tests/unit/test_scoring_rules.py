"""Scoring rules' selection of production traces: metadata matching, sampling by trace id, the
specs a trace gets from several rules, and the rule command's checks."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.common import EvaluatorSpec
from services.ingest.commands import SetScoringRule
from services.ingest.scoring_rules import Rule, Selector, sample_point
from services.reports import render_rules

REGEX = EvaluatorSpec(type="regex", pattern="x")
CAPS = EvaluatorSpec(type="regex", pattern="^[A-Z]", name="caps")


def test_sample_point_is_uniform_and_fixed_per_trace():
    points = [sample_point(f"trace-{n}") for n in range(20_000)]
    assert all(0 <= p < 1 for p in points)
    for rate in (0.05, 0.25, 0.5, 0.9):
        share = sum(p < rate for p in points) / len(points)
        assert abs(share - rate) < 0.015, (rate, share)
    assert sample_point("trace-7") == points[7]


def test_a_rule_samples_by_trace_id_so_lower_rates_nest_in_higher_ones():
    low, high = Rule("low", (REGEX,), 0.05), Rule("high", (CAPS,), 0.2)
    ids = [f"t{n}" for n in range(5_000)]
    in_low = {t for t in ids if low.selects(t, None)}
    in_high = {t for t in ids if high.selects(t, None)}
    assert in_low and in_low < in_high
    assert 150 < len(in_low) < 350 and 850 < len(in_high) < 1150


@pytest.mark.parametrize(("where", "metadata", "selected"), [
    ({}, None, True),
    ({"env": "prod"}, {"env": "prod"}, True),
    ({"env": "prod"}, {"env": "dev"}, False),
    ({"env": "prod"}, None, False),
    ({"env": "prod"}, {}, False),
    ({"env": ["prod", "staging"]}, {"env": "staging"}, True),
    ({"user.tier": 2}, {"user": {"tier": 2}}, True),
    ({"user.tier": 2}, {"user": {"tier": 2.0}}, True),
    ({"user.tier": 2}, {"user": {"tier": "2"}}, False),
    ({"user.tier": 2}, {"user": 2}, False),
    ({"flag": True}, {"flag": 1}, False),
    ({"flag": 1}, {"flag": True}, False),
    ({"flag": True}, {"flag": True}, True),
    ({"tags": "beta"}, {"tags": ["alpha", "beta"]}, True),
    ({"tags": ["gamma", "alpha"]}, {"tags": ["alpha", "beta"]}, True),
    ({"tags": "gamma"}, {"tags": ["alpha", "beta"]}, False),
    ({"note": None}, {"note": None}, True),
    ({"note": None}, {}, False),
    ({"env": "prod", "model": "a"}, {"env": "prod", "model": "b"}, False),
    ({"env": "prod", "model": "a"}, {"env": "prod", "model": "a"}, True),
])
def test_where_matches_the_traces_metadata(where, metadata, selected):
    assert Rule("r", (REGEX,), 1.0, where).selects("t1", metadata) is selected


def test_the_selector_gives_each_trace_the_specs_of_every_rule_selecting_it_in_name_order():
    selector = Selector([Rule("b-prod", (CAPS,), 1.0, {"env": "prod"}),
                         Rule("a-all", (REGEX,), 1.0)])
    assert selector.specs("t1", {"env": "prod"}) == (REGEX, CAPS)
    assert selector.specs("t2", {"env": "dev"}) == (REGEX,)
    # One tuple per combination of rules, shared by the traces that have it.
    assert selector.specs("t3", {"env": "prod"}) is selector.specs("t1", {"env": "prod"})
    assert Selector([]).specs("t1", {"env": "prod"}) == ()
    assert Selector([Rule("p", (CAPS,), 1.0, {"env": "prod"})]).specs("t", {}) == ()


def _errors(body: dict) -> list[tuple[tuple, str]]:
    with pytest.raises(ValidationError) as e:
        SetScoringRule.model_validate(body)
    return [(err["loc"], err["msg"]) for err in e.value.errors()]


def test_the_rule_command_names_what_is_wrong():
    ok = SetScoringRule.model_validate({"evaluators": [{"type": "exact_match"}]})
    assert (ok.sample_rate, ok.where, ok.enabled) == (1.0, {}, True)
    assert _errors({"evaluators": []})[0][0] == ("evaluators",)
    assert _errors({"evaluators": [{"type": "regex"}]})[0][0] == ("evaluators", 0)
    assert _errors({"evaluators": [{"type": "exact_match"}], "sample_rate": 0})[0][0] == \
        ("sample_rate",)
    assert _errors({"evaluators": [{"type": "exact_match"}], "sample_rate": 1.5})[0][0] == \
        ("sample_rate",)
    (loc, msg), = _errors({"evaluators": [{"type": "exact_match"}], "where": {"a..b": 1}})
    assert loc == ("where",) and "'a..b' is not a metadata key" in msg
    (loc, msg), = _errors({"evaluators": [{"type": "exact_match"}], "where": {"env": {"a": 1}}})
    assert loc == ("where",) and "'env': give a string" in msg
    (loc, msg), = _errors({"evaluators": [{"type": "exact_match"}], "where": {"env": []}})
    assert "'env': give a string" in msg
    assert _errors({"evaluators": [{"type": "exact_match"}, {"type": "exact_match"}]})


def test_rules_render_as_a_table():
    text = render_rules([{"name": "prod", "enabled": False, "sample_rate": 0.1,
                          "where": {"env": ["prod", "staging"], "tier": 2},
                          "evaluators": [{"type": "regex", "name": "caps", "pattern": "x"}]}])
    assert 'prod  no       0.1     env="prod" | "staging", tier=2  caps (regex)' in text
    assert "no scoring rules" in render_rules([])
