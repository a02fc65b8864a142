"""Benchmark of the production read side: GET /v1/monitoring's query over a read model holding
N production traces (posted outside runs, spread over 50 days, 3 scores each but for the failed
tenth) beside run traces, for windows of 1 hour to 30 days, best of `--repetitions`; then
retention's sweeps of them (docs/adr/0017): the first, of the 20 oldest days at once, and then
a day's and an hour's worth, as the projections service's hourly sweeps remove.

    .venv/bin/python -m bench.monitoring [--traces 1000000] [--repetitions 3] [--no-sweep]

Uses DATABASE_URL when set, else an embedded Postgres started (and stopped) here; the rows go
into a scratch schema that is dropped at the end.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import typer

from bench.compare import postgres
from services.database import create_pool, migrate
from services.projections import monitoring
from services.projections.retention import sweep

WINDOWS = (("1 h", timedelta(hours=1), "minute"), ("24 h", timedelta(hours=24), "hour"),
           ("7 d", timedelta(days=7), "hour"), ("30 d", timedelta(days=30), "day"))
DAYS = 50


async def _load(conn: asyncpg.Connection, traces: int, until: datetime) -> None:
    step = timedelta(days=DAYS) / traces
    await conn.execute("""
        INSERT INTO run_items (run_item_id, run_id, trace_id, status, output, metadata,
                               completed_at, event_id)
        SELECT 'p' || g, NULL, 'p' || g, CASE WHEN g % 10 = 0 THEN 'failed' ELSE 'succeeded' END,
               '"x"', jsonb_build_object('model', CASE WHEN g % 2 = 0 THEN 'a' ELSE 'b' END),
               $2::timestamptz - g * $3::interval, 'e' || g
        FROM generate_series(1, $1) g""", traces, until, step)
    await conn.execute("""
        INSERT INTO scores (score_id, run_item_id, run_id, trace_id, name, source, value,
                            data_type, observed_at, event_id)
        SELECT 'p' || g || n, 'p' || g, NULL, 'p' || g, n, 'programmatic', (g % 3)::float8 / 2,
               'numeric', $2::timestamptz - g * $3::interval, 'e' || g
        FROM generate_series(1, $1) g, unnest(array['a', 'b', 'c']) n WHERE g % 10 <> 0""",
                       traces, until, step)
    runs = traces // 5  # run traces beside them, which no production figure may read
    await conn.execute("""
        INSERT INTO run_items (run_item_id, run_id, dataset_item_id, trace_id, status, output,
                               completed_at, event_id)
        SELECT 'r' || g, 'run' || (g / 1000), 'i' || g, 'r' || g, 'succeeded', '"x"',
               $2::timestamptz - g * interval '1 second', 'f' || g
        FROM generate_series(1, $1) g""", runs, until)
    await conn.execute("""
        INSERT INTO scores (score_id, run_item_id, run_id, dataset_item_id, trace_id, name,
                            source, value, data_type, observed_at, event_id)
        SELECT 'r' || g || n, 'r' || g, 'run' || (g / 1000), 'i' || g, 'r' || g, n,
               'programmatic', 1, 'numeric', $2, 'f' || g
        FROM generate_series(1, $1) g, unnest(array['a', 'b', 'c']) n""", runs, until)
    await conn.execute("VACUUM ANALYZE run_items")
    await conn.execute("VACUUM ANALYZE scores")


async def _sweeps(conn: asyncpg.Connection, until: datetime) -> None:
    oldest = until - timedelta(days=DAYS)
    typer.echo(f"{'sweep':<24} {'traces':>9} {'scores':>9} {'seconds':>8} {'µs a trace':>11}")
    for label, cut in (("the 20 oldest days", oldest + timedelta(days=20)),
                       ("one day more", oldest + timedelta(days=21)),
                       ("one hour more", oldest + timedelta(days=21, hours=1))):
        done = await sweep(conn, cut)
        gone = done.deleted["run_items"]
        typer.echo(f"{label:<24} {gone:>9,} {done.deleted['scores']:>9,} {done.seconds:>8.2f} "
                   f"{done.seconds / max(gone, 1) * 1e6:>11.0f}")


async def _bench(dsn: str, traces: int, repetitions: int, sweeps: bool) -> None:
    schema = f"bench_monitoring_{uuid.uuid4().hex[:8]}"
    await migrate(dsn, "read_model", schema)
    pool = await create_pool(dsn, schema, max_size=1)
    until = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    try:
        async with pool.acquire() as conn:
            started = time.perf_counter()
            await _load(conn, traces, until)
            typer.echo(f"{traces:,} production traces over {DAYS} days and {traces // 5:,} run "
                       f"traces loaded in {time.perf_counter() - started:.1f} s")
            typer.echo(f"{'window':<8} {'interval':<8} {'traces':>10} {'scored':>10} "
                       f"{'best ms':>9}")
            for label, length, interval in WINDOWS:
                best = float("inf")
                for _ in range(repetitions):
                    started = time.perf_counter()
                    answer = await monitoring.monitoring(conn, since=until - length, until=until,
                                                         interval=interval)
                    best = min(best, time.perf_counter() - started)
                totals = answer["totals"]
                typer.echo(f"{label:<8} {interval:<8} {totals['traces']:>10,} "
                           f"{totals['scored_traces']:>10,} {best * 1000:>9.0f}")
            if sweeps:
                await _sweeps(conn, until)
    finally:
        await pool.close()
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        finally:
            await conn.close()


def main(traces: int = typer.Option(1_000_000, min=1000, help="Production traces to load."),
         repetitions: int = typer.Option(3, min=1, help="Timings per window; the best is "
                                                        "shown."),
         sweeps: bool = typer.Option(True, "--sweep/--no-sweep",
                                     help="Time retention's sweeps too.")) -> None:
    """Time GET /v1/monitoring's query per window over a large production read model, and
    retention's sweeps of it."""
    with postgres() as dsn:
        asyncio.run(_bench(dsn, traces, repetitions, sweeps))


if __name__ == "__main__":
    typer.run(main)
