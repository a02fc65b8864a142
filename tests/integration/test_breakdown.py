"""A run's figures broken down by metadata, against a real Postgres: the scenario's events (its
traces scored by the real evaluator functions) projected into a scratch read model, and every
group's figures compared with the ones tests/comparison_scenario.py computes from the scenario
alone, for a plain key, tags (an array), a nested key and the trace's metadata."""

from __future__ import annotations

import contextlib
import copy
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from schemas.common import score_id, utcnow
from schemas.envelope import wrap
from schemas.scores import EvaluationFailed, ScoreRecorded
from schemas.traces import TraceCompleted
from services.database import create_pool
from services.projections import breakdown
from services.projections.views import InvalidQuery
from tests import comparison_scenario as sc
from tests.scratch_read_model import build

pytestmark = pytest.mark.postgres

BYS = ["item.region", "item.tags", "item.geo.coastal", "trace.attempt"]


@pytest.fixture(scope="module")
async def scenario(migrated):
    events, run_ids, _ = sc.log(uuid.uuid4().hex[:8])
    async with _read_model(migrated.dsn, events) as pool:
        yield pool, run_ids


@contextlib.asynccontextmanager
async def _read_model(dsn: str, events: list) -> AsyncIterator[asyncpg.Pool]:
    schema = await build(dsn, events)
    pool = await create_pool(dsn, schema, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()
        conn = await asyncpg.connect(dsn)
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


def _in_value_order(figures: dict) -> list:
    """The scenario's group values in the API's order: by value, no value last."""
    return sorted(figures, key=lambda v: (v is None, v if v is not None else 0))


@pytest.mark.parametrize("by", BYS)
@pytest.mark.parametrize("run", sc.RUN_KEYS)
async def test_each_group_has_the_figures_of_its_items(scenario, run, by):
    pool, run_ids = scenario
    async with pool.acquire() as conn:
        got = await breakdown.run_breakdown(conn, run_ids[run], breakdown.parse_group_by(by))
    expected = sc.breakdown_figures(run, by)
    assert [g["value"] for g in got["groups"]] == _in_value_order(expected)
    assert got["total"] == len(expected) and got["next_offset"] is None and got["by"] == by
    for group in got["groups"]:
        figures = {k: v for k, v in group.items() if k != "value"}
        assert figures == sc.close(expected[group["value"]]), group["value"]


async def test_groups_are_paged_in_value_order(scenario):
    pool, run_ids = scenario
    by = breakdown.parse_group_by("item.tags")
    async with pool.acquire() as conn:
        first = await breakdown.run_breakdown(conn, run_ids["A"], by, limit=2)
        rest = await breakdown.run_breakdown(conn, run_ids["A"], by, limit=2, offset=2)
        past = await breakdown.run_breakdown(conn, run_ids["A"], by, limit=2, offset=9)
    assert [g["value"] for g in first["groups"]] == ["g7", "large"]
    assert first["next_offset"] == 2 and first["total"] == 3
    assert [g["value"] for g in rest["groups"]] == [None] and rest["next_offset"] is None
    assert past["groups"] == [] and past["total"] == 3


NO_ITEMS = {"items": 0, "completed_items": 0, "failed_items": 0, "total_cost": 0.0,
            "total_tokens": 0, "latency_p50_ms": None, "latency_p95_ms": None,
            "items_with_scores": 0, "pass_rate": None, "evaluation_failures": 0, "scores": {}}


def _delta(own: float | None, base: float | None) -> float | None:
    return None if own is None or base is None else own - base


def _expected_entry(own: dict, base: dict, is_baseline: bool) -> dict:
    """A run's figures in a group as the comparison shows them, deltas against `base`."""
    def deltas(mine: dict, theirs: dict) -> dict:
        return {f"delta_{f}": None if is_baseline else _delta(mine[f], theirs.get(f))
                for f in ("average", "pass_rate") if f in mine}

    return {**own, "is_baseline": is_baseline,
            "delta_pass_rate": None if is_baseline else _delta(own["pass_rate"],
                                                               base["pass_rate"]),
            "scores": {name: {**figures, **deltas(figures, base["scores"].get(name, {}))}
                       for name, figures in own["scores"].items()}}


@pytest.mark.parametrize("by", BYS)
async def test_runs_side_by_side_per_group_with_deltas(scenario, by):
    pool, run_ids = scenario
    keys = ["B", "A", "C"]
    got = await breakdown.compare_breakdown(pool, [run_ids[k] for k in keys], run_ids["B"],
                                            breakdown.parse_group_by(by))
    expected = {k: sc.breakdown_figures(k, by) for k in keys}
    values = _in_value_order({v: 0 for figures in expected.values() for v in figures})
    assert [g["value"] for g in got["groups"]] == values
    assert got["baseline"] == run_ids["B"] and got["total"] == len(values)
    for group in got["groups"]:
        base = expected["B"].get(group["value"], NO_ITEMS)
        for key, entry in zip(keys, group["runs"], strict=True):
            own = expected[key].get(group["value"], NO_ITEMS)
            assert entry == sc.close({"run_id": run_ids[key],
                                      **_expected_entry(own, base, key == "B")}), (
                group["value"], key)


@pytest.mark.parametrize("by", ["category", "item", "item.", "item..x", "span.x", "trace. x"])
def test_a_wrong_key_path_names_by(by):
    with pytest.raises(InvalidQuery) as caught:
        breakdown.parse_group_by(by)
    assert caught.value.field == "by"


async def test_labels_verdicts_and_failures_count_in_their_items_groups(migrated):
    """A person's categorical labels are counted per label and move no pass rate; a verdict on an
    item the evaluators left unscored (a failed trace) makes it an item with scores; an
    evaluator's failure is counted in its item's group."""
    events, run_ids, _ = sc.log(uuid.uuid4().hex[:8])
    traces = {(e.event.run_id, e.event.dataset_item_id): e.event for e in events
              if isinstance(e.event, TraceCompleted)}
    item_ids = [i["id"] for i in sc.items(events[0].event.dataset_id.removesuffix("-dataset"))]

    def on(run: str, n: int) -> TraceCompleted:
        return traces[run_ids[run], item_ids[n]]

    def verdict(run: str, n: int, name: str, value: float, data_type: str,
                label: str | None = None):
        t = on(run, n)
        return wrap(ScoreRecorded(
            score_id=score_id(t.run_item_id, name, "manual"), run_item_id=t.run_item_id,
            run_id=t.run_id, dataset_item_id=t.dataset_item_id, name=name, value=value,
            data_type=data_type, string_value=label, source="manual", observed_at=utcnow()),
            source="test", key=t.run_item_id)

    failed = on("A", 3)
    extra = [verdict("A", 0, "tone", 1.0, "categorical", "formal"),
             verdict("A", 4, "tone", 1.0, "categorical", "formal"),
             verdict("A", 1, "tone", 1.0, "categorical", "casual"),
             verdict("B", 2, "manual", 1.0, "boolean"),  # B's failed trace of item 2
             wrap(EvaluationFailed(
                 failure_id=str(uuid.uuid4()), run_item_id=failed.run_item_id, run_id=failed.run_id,
                 dataset_item_id=failed.dataset_item_id, name="judge",
                 evaluator="llm_judge", reason="timeout", observed_at=utcnow()),
                 source="test", key=failed.run_item_id)]
    expected = {run: copy.deepcopy(sc.breakdown_figures(run, "item.region")) for run in "AB"}
    expected["A"]["west"]["scores"]["tone"] = {"average": None, "pass_rate": None, "count": 2,
                                               "labels": {"formal": 2}}
    expected["A"]["central"]["scores"]["tone"] = {"average": None, "pass_rate": None,
                                                  "count": 1, "labels": {"casual": 1}}
    expected["A"]["south"]["evaluation_failures"] = 1
    south = expected["B"]["south"]  # items 2 (failed) and 3 ("Madrid": exact, unexplained)
    assert south["items_with_scores"] == 1 and south["pass_rate"] == 0.5
    south["items_with_scores"], south["pass_rate"] = 2, 2 / 3
    south["scores"]["manual"] = {"average": 1.0, "pass_rate": 1.0, "count": 1}

    async with _read_model(migrated.dsn, events + extra) as pool:
        async with pool.acquire() as conn:
            for run in "AB":
                got = await breakdown.run_breakdown(conn, run_ids[run],
                                                    breakdown.parse_group_by("item.region"))
                assert {g.pop("value"): g for g in got["groups"]} == sc.close(expected[run])
