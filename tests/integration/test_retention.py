"""Retention of the traffic outside runs (docs/adr/0017) against a real Postgres: a sweep removes
exactly the production rows older than its cut and no row of a run; rows older than the cut that
arrive later stay out; and a schema given the cut before its events — as a rebuild is — ends up
with every table equal to the swept one, whatever the order, batching and repetition."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest
from prometheus_client import REGISTRY
from typer.testing import CliRunner

from schemas.common import run_item_key, score_id, utcnow
from schemas.envelope import Envelope, wrap
from schemas.scores import CaseFailure, CaseScore, CaseScored, ScoreRecorded, ScoreRetracted
from services.cli import app
from services.database import POINTER_TABLE, create_pool, ensure_read_model_pointer, migrate
from services.projections import monitoring
from services.projections.read_models import apply_batch
from services.projections.retention import keep_retention, sweep, sweep_live, watermark
from services.settings import RetentionSettings
from tests import production_scenario as ps

pytestmark = pytest.mark.postgres

START = ps.START
CUT = START + timedelta(hours=3)
PREFIX = "ret"


def _verdict(trace_id: str, value: bool, at, comment: str) -> Envelope:
    item = run_item_key(None, None, trace_id)
    return wrap(ScoreRecorded(
        score_id=score_id(item, "manual", "manual"), run_item_id=item, trace_id=trace_id,
        name="manual", value=float(value), data_type="boolean", source="manual",
        comment=comment, created_by="ana", observed_at=at), source="test", key=item)


def _rescored(trace_id: str, value: float, at, failed: bool = False) -> Envelope:
    """A later scoring of a production trace (a replay of a rule): its value displaces the
    first one, which goes to the history; with `failed`, its judge failed."""
    item = run_item_key(None, None, trace_id)
    return wrap(CaseScored(
        failures=(CaseFailure(failure_id=f"{item}-judge", name="judge", evaluator="llm_judge",
                              reason="model unreachable"),) if failed else (),
        run_item_id=item, trace_id=trace_id, request_id="req-1", observed_at=at,
        scores=(CaseScore(score_id=score_id(item, "similarity", "programmatic"),
                          name="similarity", value=value, data_type="numeric",
                          source="programmatic", evaluator="similarity", evaluator_version="2",
                          spec_hash="h2"),)), source="evaluator", key=item)


def _events() -> list[Envelope]:
    events, _ = ps.log(PREFIX)
    p = [t["trace_id"] for t in ps.traces(PREFIX)]
    late = START + timedelta(hours=5)
    # p[1] completed in hour 5, p[2] in hour 4, p[6] in hour 0, p[7] in hour 5, p[13] in hour 5:
    # before and after the cut (hour 3), with verdicts and rescorings before and after it.
    events += [
        _verdict(p[6], True, START + timedelta(hours=1), "early verdict, early trace"),
        _verdict(p[6], False, late, "corrected after the cut"),  # p[6]'s trace goes, this stays
        _verdict(p[1], True, START + timedelta(hours=2), "verdict before its trace"),
        _verdict(p[1], False, late + timedelta(minutes=30), "corrected"),
        _verdict(p[2], True, late, "taken back below"),
        _rescored(p[6], 0.9, START + timedelta(hours=2), failed=True),  # before the cut: goes
        _rescored(p[7], 0.95, late + timedelta(minutes=45)),  # its first value is history
        _rescored(p[13], 0.25, START + timedelta(hours=1)),  # older than p[13]'s own: history
    ]
    for at, trace_id in ((START + timedelta(hours=1), p[1]), (late + timedelta(hours=1), p[2])):
        item = run_item_key(None, None, trace_id)
        events.append(wrap(ScoreRetracted(
            score_id=score_id(item, "manual", "manual"), run_item_id=item, trace_id=trace_id,
            name="manual", retracted_by="ana", retracted_at=at), source="test", key=item))
    return events


EVENTS = _events()


async def _tables(conn: asyncpg.Connection) -> dict[str, list]:
    """Every table of the connection's schema, its rows in a canonical order."""
    names = [r[0] for r in await conn.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        " AND table_type = 'BASE TABLE' AND table_name <> 'alembic_version' ORDER BY 1")]
    return {name: sorted(repr(tuple(r.values())) for r in await conn.fetch(
        f'SELECT * FROM "{name}"')) for name in names}


@pytest.fixture
async def schema(migrated) -> AsyncIterator:
    """A fresh read-model schema: a connection on it, and a way to make another."""
    made: list[str] = []
    pools: list[asyncpg.Pool] = []
    conns: list[asyncpg.Connection] = []

    async def new() -> asyncpg.Connection:
        name = f"rm_{uuid.uuid4().hex[:10]}"
        await migrate(migrated.dsn, "read_model", name)
        made.append(name)
        pools.append(await create_pool(migrated.dsn, name, max_size=1))
        conns.append(await pools[-1].acquire())
        return conns[-1]

    yield new
    for pool, conn in zip(pools, conns, strict=True):
        await pool.release(conn)
        await pool.close()
    admin = await asyncpg.connect(migrated.dsn)
    try:
        for name in made:
            await admin.execute(f"DROP SCHEMA {name} CASCADE")
    finally:
        await admin.close()


async def _apply(conn: asyncpg.Connection, batches) -> None:
    for batch in batches:
        async with conn.transaction():
            await apply_batch(conn, batch)


def _shuffled(events: list, seed: int) -> list[list]:
    rng = random.Random(seed)
    copies = events + rng.sample(events, len(events) // 4)  # some delivered twice
    rng.shuffle(copies)
    return [copies[i:i + 7] for i in range(0, len(copies), 7)]


async def test_a_sweep_removes_exactly_the_traffic_outside_runs_before_its_cut(schema):
    conn = await schema()
    await _apply(conn, [EVENTS])
    before = await _tables(conn)
    run_rows = await conn.fetch("SELECT run_item_id FROM run_items WHERE run_id IS NOT NULL")

    done = await sweep(conn, CUT, chunk=4)  # several chunks a table
    assert done.before == CUT and await watermark(conn) == CUT

    # Every production row left is at or after the cut; every one that was, is left.
    for table, column, condition in (("run_items", "completed_at", "run_id IS NULL"),
                                     ("scores", "observed_at", "run_id IS NULL"),
                                     ("score_history", "observed_at", "outside_runs"),
                                     ("evaluation_failures", "observed_at", "run_id IS NULL"),
                                     ("retracted_scores", "retracted_at", "run_id IS NULL")):
        left = await conn.fetchval(f"SELECT min({column}) FROM {table} WHERE {condition}")
        assert left is None or left >= CUT, table
    expected = sorted(
        [t["trace_id"] for t in ps.traces(PREFIX) if t["completed_at"] >= CUT]
        + [f"{PREFIX}-shared"])  # its production trace completed at hour 7
    assert sorted(r[0] for r in await conn.fetch(
        "SELECT trace_id FROM run_items WHERE run_id IS NULL")) == expected
    assert sum(done.deleted.values()) > 0
    assert done.deleted["run_items"] == len(ps.traces(PREFIX)) + 2 - len(expected)
    assert all(done.deleted[t] > 0 for t in ("scores", "score_history", "evaluation_failures",
                                             "retracted_scores")), done.deleted

    # The run's rows are all there, untouched.
    after = await _tables(conn)
    assert sorted(r[0] for r in await conn.fetch(
        "SELECT run_item_id FROM run_items WHERE run_id IS NOT NULL")) == sorted(
        r[0] for r in run_rows)
    for table in ("runs", "datasets", "dataset_items", "applied_events", "scoreless_cases",
                  "score_requests", "score_request_cases"):
        assert after[table] == before[table], table
    run_scores = "SELECT * FROM scores WHERE run_id IS NOT NULL ORDER BY score_id"
    assert len(await conn.fetch(run_scores)) == 8 * 2  # 8 run traces, 2 scores each

    # The verdict corrected after the cut stays, although its trace is gone; p[2]'s, taken back
    # after the cut, is history with its retraction.
    p = [t["trace_id"] for t in ps.traces(PREFIX)]
    manual = {r["trace_id"]: r["comment"] for r in await conn.fetch(
        "SELECT trace_id, comment FROM scores WHERE source = 'manual'")}
    assert manual == {p[6]: "corrected after the cut", p[1]: "corrected"}
    assert await conn.fetchval("SELECT count(*) FROM retracted_scores WHERE run_item_id = $1",
                               run_item_key(None, None, p[2])) == 1

    # What the read side says: the cut, and only the traces after it.
    m = await monitoring.monitoring(conn, since=START - timedelta(hours=6),
                                    until=START + timedelta(hours=12), interval="hour")
    assert m["retained_since"] == CUT
    assert m["totals"]["traces"] == len(expected)
    assert all(b["start"] >= CUT for b in m["buckets"])

    # A lower cut changes nothing; a row older than the cut arriving later stays out.
    again = await sweep(conn, CUT - timedelta(hours=1))
    assert again.before == CUT and not any(again.deleted.values())
    old = ps.traces(PREFIX)[6]  # hour 0
    reposted = ps._case({**old, "trace_id": f"{PREFIX}-late"})  # new ids, the old times
    await _apply(conn, [reposted + [_verdict(f"{PREFIX}-late", True, CUT - timedelta(1), "x")]])
    assert await conn.fetchval("SELECT count(*) FROM run_items WHERE trace_id = $1",
                               f"{PREFIX}-late") == 0
    assert await conn.fetchval("SELECT count(*) FROM scores WHERE trace_id = $1",
                               f"{PREFIX}-late") == 0
    assert await _tables(conn) | {"applied_events": []} == after | {"applied_events": []}


@pytest.mark.parametrize("seed", [1, 2])
async def test_a_schema_given_the_cut_first_equals_the_swept_one(schema, seed):
    """As a rebuild: the watermark first, then the log in any order (some of it twice, in small
    batches); the live side: part of the log, a sweep, the rest, a sweep."""
    live = await schema()
    half = len(EVENTS) // 2
    await _apply(live, [EVENTS[:half]])
    await sweep(live, CUT)
    await _apply(live, [EVENTS[half:]])
    await sweep(live, CUT)

    rebuilt = await schema()
    await sweep(rebuilt, CUT)
    await _apply(rebuilt, _shuffled(EVENTS, seed))
    assert await _tables(rebuilt) == await _tables(live)

    # Without the cut, the rebuilt schema would hold the old traffic: the test can fail.
    unswept = await schema()
    await _apply(unswept, _shuffled(EVENTS, seed))
    assert await _tables(unswept) != await _tables(live)


@pytest.fixture
async def live_model(migrated) -> AsyncIterator[tuple]:
    """A read model of its own, as the services find it: a pointer naming its live schema;
    its settings and a connection on that schema."""
    name = f"rm_{uuid.uuid4().hex[:10]}"
    settings = migrated.model_copy(update={"read_model_schema": name})
    admin = await asyncpg.connect(migrated.dsn)
    await ensure_read_model_pointer(admin, name)
    await migrate(migrated.dsn, "read_model", name)
    pool = await create_pool(migrated.dsn, name, max_size=3)
    try:
        async with pool.acquire() as conn:
            yield settings, pool, conn
    finally:
        await pool.close()
        await admin.execute(f"DROP SCHEMA {name} CASCADE")
        await admin.execute(f"DELETE FROM {POINTER_TABLE} WHERE name = $1", name)
        await admin.close()


def _production_trace(trace_id: str, completed_at) -> list[Envelope]:
    return ps._case({**ps.trace(PREFIX, 1), "trace_id": trace_id, "completed_at": completed_at})


async def test_the_projections_service_sweeps_by_itself(live_model):
    """keep_retention, as the projections service runs it with EVALSTREAM_RETENTION__*: the
    traces older than the retention go on its next round, the others stay."""
    settings, pool, conn = live_model
    settings = settings.model_copy(update={"retention": RetentionSettings(
        outside_runs=timedelta(hours=1), sweep_interval_s=0.05)})
    now = utcnow()
    await _apply(conn, [_production_trace("old", now - timedelta(hours=2))
                        + _production_trace("new", now - timedelta(minutes=10))])
    swept_before = REGISTRY.get_sample_value("evalstream_retention_swept_rows_total",
                                             {"table": "run_items"}) or 0
    sweeper = asyncio.create_task(keep_retention(settings, pool))
    try:
        async with asyncio.timeout(10):
            while await conn.fetchval("SELECT count(*) FROM run_items") != 1:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
    assert await conn.fetchval("SELECT trace_id FROM run_items") == "new"
    kept = await watermark(conn)
    assert now - timedelta(hours=1) <= kept <= utcnow() - timedelta(hours=1)
    assert await conn.fetchval("SELECT count(*) FROM scores WHERE trace_id = 'old'") == 0
    assert await conn.fetchval("SELECT count(*) FROM scores WHERE trace_id = 'new'") > 0
    # What Prometheus is told.
    assert REGISTRY.get_sample_value("evalstream_retention_swept_rows_total",
                                     {"table": "run_items"}) == swept_before + 1
    shown = REGISTRY.get_sample_value("evalstream_retention_watermark_timestamp_seconds")
    # (the last round's: the task may have been cancelled in a round after raising it)
    assert (now - timedelta(hours=1)).timestamp() <= shown <= kept.timestamp()


def _sweep_cli(settings, *args: str, retention: str | None = None):
    env = {"DATABASE_URL": settings.dsn, "EVALSTREAM_READ_MODEL_SCHEMA": settings.read_model_schema,
           "EVALSTREAM_RETENTION__OUTSIDE_RUNS": retention or "", "EVALSTREAM_LOG_LEVEL": "WARNING"}
    # The command runs its own event loop (asyncio.run): not on this test's thread.
    return asyncio.to_thread(CliRunner().invoke, app, ["projections", "sweep", *args], env=env)


async def test_evalstream_projections_sweep(live_model):
    settings, _, conn = live_model
    now = utcnow()
    await _apply(conn, [_production_trace("old", now - timedelta(days=8))
                        + _production_trace("new", now - timedelta(days=6))])
    refused = await _sweep_cli(settings)
    assert refused.exit_code == 2 and "--older-than" in refused.output
    bad = await _sweep_cli(settings, "--older-than", "7 days")
    assert bad.exit_code == 2 and "neither an ISO 8601 time" in bad.output
    future = await _sweep_cli(settings, "--older-than", "2999-01-01T00:00:00")
    assert future.exit_code == 2 and "is in the future" in future.output
    done = await _sweep_cli(settings, "--older-than", "7d", "--json")
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert report["deleted"]["run_items"] == 1 and report["deleted"]["scores"] > 0
    assert await conn.fetchval("SELECT array_agg(trace_id) FROM run_items") == ["new"]
    # From the settings, in words.
    words = await _sweep_cli(settings, retention="5d")
    assert words.exit_code == 0, words.output
    assert "keep the traffic outside runs from" in words.stdout
    assert await conn.fetchval("SELECT count(*) FROM run_items") == 0


async def test_sweeps_while_the_consumer_applies(live_model, migrated):
    """The service's sweeps and the live consumer's batches at once, on two connections: no
    error, and after a last sweep exactly the traces at or after the cut are left, whatever
    interleaving happened (a batch that began before a cut and wrote an older row is swept by
    the next round)."""
    settings, pool, conn = live_model
    start = utcnow() - timedelta(hours=2)
    traces = [_production_trace(f"c-{n}", start + timedelta(seconds=n * 6)) for n in range(800)]
    cuts = [start + timedelta(minutes=m) for m in range(0, 81, 10)]

    async def consume() -> None:
        async with pool.acquire() as mine:
            for i in range(0, len(traces), 50):
                await _apply(mine, [[env for t in traces[i:i + 50] for env in t]])

    async def sweeps() -> None:
        async with pool.acquire() as mine:
            for cut in cuts:
                assert await sweep_live(settings, mine, cut) is not None
                await asyncio.sleep(0.01)

    await asyncio.gather(consume(), sweeps())
    await sweep(conn, cuts[-1])
    left = {r[0] for r in await conn.fetch("SELECT trace_id FROM run_items")}
    assert left == {f"c-{n}" for n in range(800)
                    if start + timedelta(seconds=n * 6) >= cuts[-1]}
    assert await conn.fetchval(
        "SELECT count(*) FROM scores WHERE observed_at < $1", cuts[-1]) == 0
    assert await conn.fetchval("SELECT count(DISTINCT trace_id) FROM scores") == len(left)
