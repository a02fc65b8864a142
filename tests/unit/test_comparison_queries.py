"""The comparison's parameter parsing and query building, without a database: bad parameters name
the field, and the dashboard views name the read-model schema for every table they read."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from services.projections import comparison, views
from services.projections.dashboard import VIEWS
from services.projections.views import InvalidQuery


@pytest.mark.parametrize("runs,baseline,field", [
    ("", None, "runs"), (" , ", None, "runs"), ("a,b,a", None, "runs"),
    (",".join(f"r{i}" for i in range(11)), None, "runs"), ("a,b", "c", "baseline")])
def test_bad_runs_and_baselines_name_their_parameter(runs, baseline, field):
    with pytest.raises(InvalidQuery) as e:
        comparison.parse_runs(runs, baseline)
    assert e.value.field == field and e.value.status == 422


def test_runs_keep_their_order_and_the_baseline_is_resolved_later():
    # (with none given: the dataset's baseline run or the first, comparison.resolve)
    assert comparison.parse_runs(" b, a ,c", None) == (["b", "a", "c"], None)
    assert comparison.parse_runs("b,a", "a") == (["b", "a"], "a")
    assert comparison.parse_runs("a", None) == (["a"], None)


def test_sections_and_sorts():
    assert comparison.parse_sections("items") == ("items",)
    assert comparison.parse_sections("scores, runs") == ("scores", "runs")
    for bad in ("", "items,charts"):
        with pytest.raises(InvalidQuery) as e:
            comparison.parse_sections(bad)
        assert e.value.field == "include"
    assert views.parse_result_sort("score:exact_match") == "score:exact_match"
    for bad in ("score:", "output", "dataset_item_id; DROP TABLE runs"):
        with pytest.raises(InvalidQuery) as e:
            views.parse_result_sort(bad)
        assert e.value.field == "sort"


@pytest.mark.parametrize("item_filter,score,params", [
    (None, None, []), ("status_changed", None, []),
    ("regressions", None, ["base"]), ("improvements", "exact_match", ["exact_match", "base"])])
def test_item_page_parameters_are_numbered_after_the_fixed_ones(item_filter, score, params):
    sql, extra = comparison._item_page_sql(item_filter, score, "base")
    assert extra == params
    used = {int(n) for n in re.findall(r"\$(\d+)", sql)}
    assert used == set(range(1, 5 + len(params)))


def test_results_parameters_are_numbered_after_the_fixed_ones():
    sql, extra = views._results_sql(views.RunScope("r1"), "score:explains", True, "failed",
                                    "exact_match", "succeeded")
    assert extra == ["r1", "succeeded", "exact_match", "explains"]
    assert {int(n) for n in re.findall(r"\$(\d+)", sql)} == set(range(1, 8))
    assert "DESC NULLS LAST" in sql


@pytest.mark.parametrize("scope,first", [
    (views.TraceScope("t1"), ["t1"]), (views.ProductionScope(), []),
    (views.ProductionScope(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)),
     [datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)])])
def test_every_scope_numbers_its_parameters_after_the_fixed_ones(scope, first):
    sql, extra = views._results_sql(scope, "score:explains", False, "passed", "exact_match",
                                    None, ("trace", ["model"], "gpt"))
    assert extra == [*first, ["model"], "gpt", "exact_match", "explains"]
    assert {int(n) for n in re.findall(r"\$(\d+)", sql)} == set(range(1, 4 + len(extra)))
    # outside runs: never a run's items (the partial index's predicate)
    assert ("r.run_id IS NULL" in sql) == isinstance(scope, views.ProductionScope)


@pytest.mark.parametrize("name", list(VIEWS))
def test_every_table_a_view_reads_is_in_the_named_read_model_schema(name):
    # An unqualified name would bind to whatever schema the creating connection has first on its
    # search_path, not to the read models the view is meant to show.
    sql = views.sql_template(VIEWS[name][0], '"rm_x".')
    tables = [t for t in re.findall(r"\b(?:FROM|JOIN)\s+(?!LATERAL\b|\(|unnest\b)(\S+)", sql)
              if "(" not in t]  # a set-returning function, e.g. jsonb_array_elements(...)
    assert tables and all(t.startswith('"rm_x".') for t in tables), tables
