"""Retention of the traces posted outside any run (production traffic), docs/adr/0017.

The read models keep such a trace, its scores, earlier values, verdicts taken back and evaluator
failures while each row's own time is at or after a watermark (`retention.outside_runs_before`).
A sweep raises the watermark and deletes the rows before it; the handlers in read_models.py skip
rows before it as they arrive (read_models.RETAINED). Since whether a row is kept depends on the
row and the watermark alone, not on what arrived when, a rebuild given the same watermark comes
out identical (rebuild.py carries the live one over). Runs are never touched; the log keeps
every event.

The projections service sweeps every `EVALSTREAM_RETENTION__SWEEP_INTERVAL_S` when
`EVALSTREAM_RETENTION__OUTSIDE_RUNS` is set; `evalstream projections sweep` sweeps once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from schemas.common import utcnow
from services import metrics
from services.database import POINTER_TABLE
from services.projections.live_schema import enter_live_schema
from services.settings import Settings

log = logging.getLogger(__name__)

# (table, its time column, which of its rows are about traffic outside runs). Each has a
# partial index on the time column under the same condition (migration 0017; run_items': 0016).
SWEPT: tuple[tuple[str, str, str], ...] = (
    ("run_items", "completed_at", "run_id IS NULL"),
    ("scores", "observed_at", "run_id IS NULL"),
    ("score_history", "observed_at", "outside_runs"),
    ("evaluation_failures", "observed_at", "run_id IS NULL"),
    ("retracted_scores", "retracted_at", "run_id IS NULL"),
)
CHUNK = 10_000  # rows deleted per transaction: no long lock on the rows a late event may touch

# pg_try_advisory_lock key space: one sweep per read model at a time, whatever the processes.
_SWEEP_LOCK = "evalstream-retention:"


@dataclass
class Sweep:
    before: datetime  # the watermark after the sweep (never lower than it was)
    deleted: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"before": self.before.isoformat(), "deleted": self.deleted,
                "seconds": round(self.seconds, 3)}


async def watermark(conn: asyncpg.Connection) -> datetime | None:
    """The connection's schema's watermark; None while nothing was ever swept."""
    return await conn.fetchval(
        "SELECT nullif(outside_runs_before, '-infinity') FROM retention")


async def cut_of(conn: asyncpg.Connection, schema: str) -> datetime | None:
    """The watermark of the read model in `schema`; None while nothing was ever swept there
    (or the schema predates retention)."""
    if await conn.fetchval("SELECT to_regclass(format('%I.retention', $1::text))",
                           schema) is None:
        return None
    return await conn.fetchval(
        f"SELECT nullif(outside_runs_before, '-infinity') FROM \"{schema}\".retention")


async def live_cut(settings: Settings) -> datetime | None:
    """The live read model's watermark, for commands that read the log and would otherwise
    rescore traffic the read models no longer keep (replay)."""
    conn = await asyncpg.connect(settings.dsn)
    try:
        if await conn.fetchval("SELECT to_regclass($1)", POINTER_TABLE) is None:
            return None
        schema = await conn.fetchval(f"SELECT live_schema FROM {POINTER_TABLE} WHERE name = $1",
                                     settings.read_model_schema)
        return None if schema is None else await cut_of(conn, schema)
    finally:
        await conn.close()


async def sweep(conn: asyncpg.Connection, before: datetime, *,
                live_read_model: str | None = None, chunk: int = CHUNK) -> Sweep:
    """Raise the watermark to `before` (a lower one changes nothing) and delete the rows outside
    runs older than the watermark, `chunk` rows per transaction. In the connection's schema, or,
    given `live_read_model`, in whichever schema is live for each transaction (a rebuild's switch
    waits for it, then the next one sweeps the new schema)."""
    loop = asyncio.get_running_loop()
    started = loop.time()

    @contextlib.asynccontextmanager
    async def transaction():
        async with conn.transaction():
            if live_read_model is not None:
                await enter_live_schema(conn, live_read_model)
            yield

    async with transaction():
        # Committed before anything is deleted: from here the handlers skip older rows.
        at = await conn.fetchval(
            "UPDATE retention SET outside_runs_before = greatest(outside_runs_before, $1)"
            " RETURNING outside_runs_before", before)
    result = Sweep(before=at)
    for table, column, condition in SWEPT:
        result.deleted[table] = 0
        while True:
            async with transaction():
                n = await conn.fetchval(f"""
                    WITH gone AS (
                        DELETE FROM {table} WHERE ctid = ANY(ARRAY(
                            SELECT ctid FROM {table} WHERE {condition} AND {column} < $1
                            LIMIT $2))
                        RETURNING 1)
                    SELECT count(*) FROM gone""", at, chunk)
            result.deleted[table] += n
            if n < chunk:
                break
    result.seconds = loop.time() - started
    return result


async def sweep_live(settings: Settings, conn: asyncpg.Connection,
                     before: datetime) -> Sweep | None:
    """One sweep of the live read model, unless another process is sweeping it (None)."""
    key = _SWEEP_LOCK + settings.read_model_schema
    if not await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", key):
        return None
    try:
        return await sweep(conn, before, live_read_model=settings.read_model_schema)
    finally:
        await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", key)


async def keep_retention(settings: Settings, pool: asyncpg.Pool) -> None:
    """The projections service's sweeper: every `sweep_interval_s`, the rows outside runs older
    than `outside_runs` go. A failed sweep (Postgres away) is logged and tried next time."""
    keep = settings.retention.outside_runs
    assert keep is not None
    while True:
        try:
            async with pool.acquire() as conn:
                done = await sweep_live(settings, conn, utcnow() - keep)
            if done is not None:
                metrics.RETENTION_WATERMARK.set(done.before.timestamp())
                for table, count in done.deleted.items():
                    metrics.RETENTION_SWEPT.labels(table).inc(count)
            if done is not None and any(done.deleted.values()):
                log.info("retention: removed the traffic outside runs before %s: %s (%.1f s)",
                         done.before.isoformat(), done.deleted, done.seconds)
        except (OSError, asyncpg.PostgresError) as e:
            log.warning("retention: the sweep failed (%s); trying again in %.0f s", e,
                        settings.retention.sweep_interval_s)
        await asyncio.sleep(settings.retention.sweep_interval_s)
