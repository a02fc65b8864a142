"""The read side of traces posted outside any run (production traffic) against a real Postgres:
the scenario's events (tests/production_scenario.py) applied through the projection handlers,
then read through the query API's endpoints — GET /v1/traces/{id}, GET /v1/traces and
GET /v1/monitoring — whose figures are checked against the scenario's own, computed without SQL.
A run's traces completed in the same hours never count."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from services.database import create_pool, migrate
from services.projections.api import router
from services.settings import Settings
from tests import production_scenario as ps
from tests.scratch_read_model import build

pytestmark = pytest.mark.postgres

PREFIX = "prod"
START, HOURS = ps.START, ps.HOURS
TRACES = ps.traces(PREFIX)
# Production traces outside the six hours: the shared trace id's production one (7 h), the
# other one's (-3 h).
ELSEWHEN = [START + timedelta(hours=7), START - timedelta(hours=3)]
ALL_OUTSIDE_RUNS = len(TRACES) + len(ELSEWHEN)


@pytest.fixture(scope="module")
async def api(migrated) -> AsyncIterator[dict]:
    events, ids = ps.log(PREFIX)
    schema = await build(migrated.dsn, events)
    pool = await create_pool(migrated.dsn, schema)
    app = FastAPI()
    app.include_router(router)
    app.state.pool = pool
    app.state.settings = Settings(trace_url_template="https://traces.example/{trace_id}")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://query") as client:
        yield {"client": client, "schema": schema, "dsn": migrated.dsn, **ids}
    await pool.close()
    conn = await asyncpg.connect(migrated.dsn)
    try:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await conn.close()


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _close(expected):
    """Floats compared to ~1e-9."""
    if isinstance(expected, float):
        return pytest.approx(expected)
    if isinstance(expected, dict):
        return {k: _close(v) for k, v in expected.items()}
    if isinstance(expected, list):
        return [_close(v) for v in expected]
    return expected


def _hour(t: dict) -> datetime:
    return t["completed_at"].replace(minute=0, second=0, microsecond=0)


async def _get(api, path: str, **params) -> dict:
    r = await api["client"].get(path, params=params)
    assert r.status_code == 200, r.text
    return r.json()


async def _refused(api, path: str, **params) -> tuple[int, list]:
    r = await api["client"].get(path, params=params)
    return r.status_code, r.json()["detail"][0]["loc"]


# GET /v1/monitoring

async def test_monitoring_gives_each_hours_figures_and_the_totals(api):
    got = await _get(api, "/v1/monitoring", since=_iso(START),
                     until=_iso(START + timedelta(hours=HOURS)))
    hours = sorted({_hour(t) for t in TRACES})
    assert len(hours) == HOURS
    assert [_at(b["start"]) for b in got["buckets"]] == hours
    for bucket in got["buckets"]:
        subset = [t for t in TRACES if _hour(t) == _at(bucket["start"])]
        assert {k: v for k, v in bucket.items() if k != "start"} == _close(ps.figures(subset))
    assert got["totals"] == _close(ps.figures(TRACES))
    # the run's traces, in the same hours, count nowhere: 30 traces, not 38
    assert got["totals"]["traces"] == 30
    assert (got["interval"], _at(got["since"]), _at(got["until"])) == (
        "hour", START, START + timedelta(hours=HOURS))


async def test_monitoring_of_one_score_one_group_and_other_windows(api):
    window = {"since": _iso(START), "until": _iso(START + timedelta(hours=HOURS))}
    one = await _get(api, "/v1/monitoring", **window, score="similarity")
    assert one["totals"] == _close(ps.figures(TRACES, "similarity"))
    assert set(one["totals"]["scores"]) == {"similarity"}

    model_b = [t for t in TRACES if t["metadata"]["model"] == "b"]
    grouped = await _get(api, "/v1/monitoring", **window, by="trace.model", group="b")
    assert grouped["totals"] == _close(ps.figures(model_b))
    tagged_y = await _get(api, "/v1/monitoring", **window, by="trace.tags", group="y")
    assert tagged_y["totals"] == _close(ps.figures(
        [t for t in TRACES if "y" in t["metadata"]["tags"]]))

    # one day: one bucket, the day's start; the shared trace's production copy (7 h) is in it
    day = await _get(api, "/v1/monitoring", since=_iso(START),
                     until=_iso(START + timedelta(days=1)), interval="day")
    assert [_at(b["start"]) for b in day["buckets"]] == [START]
    assert day["totals"]["traces"] == len(TRACES) + 1

    # a window starting mid-hour: its first bucket is aligned and holds only what is inside
    since, until = START + timedelta(hours=1, minutes=30), START + timedelta(hours=4)
    part = await _get(api, "/v1/monitoring", since=_iso(since), until=_iso(until))
    inside = [t for t in TRACES if since <= t["completed_at"] < until]
    assert _at(part["buckets"][0]["start"]) == START + timedelta(hours=1)
    assert part["buckets"][0]["traces"] == sum(_hour(t) == START + timedelta(hours=1)
                                               for t in inside)
    assert part["totals"] == _close(ps.figures(inside))

    # minutes: every trace in the bucket of its minute
    minutes = await _get(api, "/v1/monitoring", **window, interval="minute")
    expected: dict[datetime, int] = {}
    for t in TRACES:
        key = t["completed_at"].replace(second=0)
        expected[key] = expected.get(key, 0) + 1
    assert {_at(b["start"]): b["traces"] for b in minutes["buckets"]} == expected

    # nothing in the window: no bucket, zero totals
    empty = await _get(api, "/v1/monitoring", since=_iso(START - timedelta(days=3)),
                       until=_iso(START - timedelta(days=2)))
    assert empty["buckets"] == [] and empty["totals"] == ps.figures([])


async def test_monitoring_defaults_to_the_last_day_by_the_hour(api):
    got = await _get(api, "/v1/monitoring")
    assert got["interval"] == "hour"
    assert _at(got["until"]) - _at(got["since"]) == timedelta(hours=24)
    assert got["totals"]["traces"] == 0  # the scenario's traffic is in 2026-03


@pytest.mark.parametrize("params,field", [
    ({"interval": "week"}, "interval"),
    ({"interval": "minute"}, "interval"),  # 24 h of minutes: 1,440 buckets
    ({"since": "2026-03-02T00:00:00Z", "until": "2026-03-01T00:00:00Z"}, "since"),
    ({"since": "yesterday"}, "since"),
    ({"until": "2026-13-01"}, "until"),
    ({"by": "item.category", "group": "c"}, "by"),
    ({"by": "trace.model"}, "group"),
    ({"group": "a"}, "by"),
    ({"by": "model", "group": "a"}, "by"),
])
async def test_monitoring_refuses_bad_parameters_naming_them(api, params, field):
    assert await _refused(api, "/v1/monitoring", **params) == (422, ["query", field])


async def test_a_thousand_buckets_are_answered_and_more_are_refused(api):
    since = START + timedelta(minutes=1)
    ok = await _get(api, "/v1/monitoring", since=_iso(since),
                    until=_iso(since + timedelta(minutes=1000)), interval="minute")
    assert ok["totals"]["traces"] == sum(
        since <= at < since + timedelta(minutes=1000)
        for at in [*(t["completed_at"] for t in TRACES), *ELSEWHEN]) == len(TRACES)
    # one second more touches a 1,001st minute
    assert await _refused(api, "/v1/monitoring", since=_iso(since), interval="minute",
                          until=_iso(since + timedelta(minutes=1000, seconds=1))) == (
        422, ["query", "interval"])


# GET /v1/traces

async def test_traces_lists_production_traces_newest_first_with_their_scores(api):
    got = await _get(api, "/v1/traces", since=_iso(START),
                     until=_iso(START + timedelta(hours=HOURS)), limit="1000")
    newest_first = sorted(TRACES, key=lambda t: t["completed_at"], reverse=True)
    assert [i["trace_id"] for i in got["items"]] == [t["trace_id"] for t in newest_first]
    assert (got["total"], got["limit"], got["offset"], got["next_offset"]) == (30, 1000, 0, None)
    for item, t in zip(got["items"], newest_first, strict=True):
        assert item["metadata"] == t["metadata"] and item["status"] == t["status"]
        assert _at(item["completed_at"]) == t["completed_at"]
        assert item["trace_url"] == f"https://traces.example/{t['trace_id']}"
        assert item["dataset_item_id"] is None and item["item_metadata"] is None
        assert "run_id" not in item
        assert [(s["name"], s["value"], s["passed"], s["string_value"])
                for s in item["scores"]] == sorted(
            (name, value, None if dt == "categorical" else value >= (th or ps.PASS), label)
            for name, dt, value, label, th in t["scores"])
        assert [f["name"] for f in item["evaluation_failures"]] == t["failures"]
    # without bounds: every trace outside runs, and no run's
    everything = await _get(api, "/v1/traces", limit="1000")
    assert everything["total"] == ALL_OUTSIDE_RUNS
    assert {i["trace_id"] for i in everything["items"]} == {
        *(t["trace_id"] for t in TRACES), api["shared"], api["run_latest"]}


async def test_traces_pages_filters_and_groups(api):
    window = {"since": _iso(START), "until": _iso(START + timedelta(hours=HOURS))}
    newest_first = sorted(TRACES, key=lambda t: t["completed_at"], reverse=True)
    page = await _get(api, "/v1/traces", **window, limit="7", offset="14")
    assert [i["trace_id"] for i in page["items"]] == [t["trace_id"]
                                                      for t in newest_first[14:21]]
    assert (page["total"], page["next_offset"]) == (30, 21)

    async def ids(**params) -> list[str]:
        return [i["trace_id"] for i in (await _get(api, "/v1/traces", **window, limit="1000",
                                                   **params))["items"]]

    for which in ("passed", "failed", "unscored", "evaluator_failed"):
        assert await ids(filter=which) == [t["trace_id"] for t in newest_first
                                           if ps.outcome(t, which)], which
        assert await ids(filter=which, score="similarity") == [
            t["trace_id"] for t in newest_first if ps.outcome(t, which, "similarity")], which
    assert await ids(status="failed") == [t["trace_id"] for t in newest_first
                                          if t["status"] == "failed"]
    assert await ids(by="trace.tags", group="y") == [
        t["trace_id"] for t in newest_first if "y" in t["metadata"]["tags"]]
    assert await ids(by="trace.n", group="7") == [f"{PREFIX}-p7"]
    since = START + timedelta(hours=2)
    assert [i["trace_id"] for i in (await _get(
        api, "/v1/traces", since=_iso(since), until=window["until"], limit="1000"))["items"]] == [
        t["trace_id"] for t in newest_first if t["completed_at"] >= since]


@pytest.mark.parametrize("params,field", [
    ({"filter": "great"}, "filter"), ({"status": "done"}, "status"),
    ({"since": "soon"}, "since"), ({"limit": "0"}, "limit"), ({"offset": "-1"}, "offset"),
    ({"since": "2026-03-02T00:00:00Z", "until": "2026-03-01T00:00:00Z"}, "since"),
    ({"by": "item.category", "group": "c"}, "by"), ({"by": "trace.model"}, "group"),
])
async def test_traces_refuses_bad_parameters_naming_them(api, params, field):
    assert await _refused(api, "/v1/traces", **params) == (422, ["query", field])


async def test_traces_csv_holds_every_listed_trace_with_a_column_per_score(api):
    window = {"since": _iso(START), "until": _iso(START + timedelta(hours=HOURS))}
    r = await api["client"].get("/v1/traces.csv", params=window)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert 'filename="traces-outside-runs.csv"' in r.headers["content-disposition"]
    header, *rows = list(csv.reader(io.StringIO(r.text)))
    names = sorted({name for t in TRACES for name, *_ in t["scores"]})
    assert header[-len(names) - 1:] == [*names, "evaluation_failures"]
    newest_first = sorted(TRACES, key=lambda t: t["completed_at"], reverse=True)
    assert [row[header.index("trace_id")] for row in rows] == [
        t["trace_id"] for t in newest_first]
    for row, t in zip(rows, newest_first, strict=True):
        cells = dict(zip(header, row, strict=True))
        assert cells["status"] == t["status"]
        assert json.loads(cells["metadata"]) == t["metadata"]
        assert cells["trace_url"] == f"https://traces.example/{t['trace_id']}"
        expected = {name: (label if dt == "categorical" else f"{value:g}")
                    for name, dt, value, label, _ in t["scores"]}
        assert {n: cells[n] for n in names} == {n: expected.get(n, "") for n in names}
        assert cells["evaluation_failures"] == "; ".join(
            f"{name}: model unreachable" for name in t["failures"])
    # Filtered as the list is; a bad parameter is refused naming it.
    failed = await api["client"].get("/v1/traces.csv", params={
        **window, "filter": "failed", "score": "similarity"})
    assert [row[1] for row in list(csv.reader(io.StringIO(failed.text)))[1:]] == [
        t["trace_id"] for t in newest_first if ps.outcome(t, "failed", "similarity")]
    assert await _refused(api, "/v1/traces.csv", by="item.category", group="c") == (
        422, ["query", "by"])
    # Without bounds: every trace outside runs, and no run's.
    everything = list(csv.reader(io.StringIO((await api["client"].get("/v1/traces.csv")).text)))
    assert len(everything) - 1 == ALL_OUTSIDE_RUNS


# GET /v1/traces/{id}

async def test_one_production_trace_with_its_scores_and_failures(api):
    t = ps.trace(PREFIX, 7)  # exact_match, similarity under its 0.8 threshold, a failure
    got = await _get(api, f"/v1/traces/{t['trace_id']}")
    assert (got["trace_id"], got["run_id"], got["dataset_id"], got["dataset_item_id"]) == (
        t["trace_id"], None, None, None)
    assert got["run_item_id"] and got["status"] == "succeeded"
    assert got["input"] == {"q": 7} and got["output"] == "answer 7"
    assert got["latency_ms"] == 107.0 and got["metadata"] == t["metadata"]
    assert {s["name"]: (s["value"], s["passed"], s["pass_threshold"])
            for s in got["scores"]} == {"exact_match": (1.0, True, None),
                                        "similarity": (0.7, False, 0.8)}
    assert [(f["name"], f["reason"]) for f in got["evaluation_failures"]] == [
        ("judge", "model unreachable")]
    assert got["trace_url"] == f"https://traces.example/{t['trace_id']}"


async def test_a_run_trace_and_the_latest_of_a_shared_trace_id(api):
    got = await _get(api, f"/v1/traces/{PREFIX}-r3")
    assert (got["run_id"], got["dataset_id"], got["dataset_item_id"]) == (
        api["run_id"], api["dataset_id"], "i3")
    assert got["item_metadata"] == {"category": "c"}
    assert [s["name"] for s in got["scores"]] == ["exact_match", "similarity"]
    # in the run at 0:30, outside at 7:00: the later one
    shared = await _get(api, f"/v1/traces/{api['shared']}")
    assert shared["run_id"] is None and _at(shared["completed_at"]) == START + timedelta(hours=7)
    latest = await _get(api, f"/v1/traces/{api['run_latest']}")
    assert latest["run_id"] == api["run_id"]
    assert _at(latest["completed_at"]) == START + timedelta(hours=HOURS + 2)


async def test_an_unknown_trace_is_a_404_naming_it(api):
    r = await api["client"].get("/v1/traces/nope")
    assert r.status_code == 404
    [detail] = r.json()["detail"]
    assert detail["loc"] == ["path", "trace_id"] and "nope" in detail["msg"]
    assert "retention" not in detail["msg"]  # nothing was ever swept here


# The index

async def test_a_fresh_schema_has_the_index_and_the_listing_uses_it(migrated):
    """A schema migrated as a rebuild makes one has the partial index; with a run's many traces
    beside a few production ones, the listing and the monitoring read it, not the run's."""
    schema = f"rm_{uuid.uuid4().hex[:10]}"
    await migrate(migrated.dsn, "read_model", schema)
    conn = await asyncpg.connect(migrated.dsn, server_settings={"search_path": schema})
    try:
        assert await conn.fetchval(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = $1"
            " AND indexname = 'run_items_outside_runs'", schema) == (
            f"CREATE INDEX run_items_outside_runs ON {schema}.run_items USING btree "
            "(completed_at) WHERE (run_id IS NULL)")
        await conn.execute("""
            INSERT INTO run_items (run_item_id, run_id, trace_id, status, completed_at, event_id)
            SELECT 'r' || n, 'run' || (n % 10), 't' || n, 'succeeded',
                   $1::timestamptz + n * interval '1 second', 'e' || n
            FROM generate_series(1, 50000) n;
            INSERT INTO run_items (run_item_id, trace_id, status, completed_at, event_id)
            SELECT 'p' || n, 'p' || n, 'succeeded',
                   $1::timestamptz + n * interval '1 minute', 'f' || n
            FROM generate_series(1, 200) n""".replace("$1", f"'{_iso(START)}'"))
        await conn.execute("ANALYZE run_items")
        from services.projections import monitoring, views

        sql, params = views._results_sql(
            views.ProductionScope(START, START + timedelta(hours=2)), "completed_at", True,
            None, None, None)
        plan = "\n".join(r[0] for r in await conn.fetch(
            "EXPLAIN " + sql, 0.5, 100, 0, *params))
        assert "run_items_outside_runs" in plan and "Seq Scan on run_items" not in plan, plan
        sql, params = monitoring._sql(None, None)
        plan = "\n".join(r[0] for r in await conn.fetch(
            "EXPLAIN " + sql, START, START + timedelta(hours=2), "hour", *params))
        assert "run_items_outside_runs" in plan and "Seq Scan on run_items" not in plan, plan
    finally:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()
