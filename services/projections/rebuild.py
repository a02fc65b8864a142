"""`evalstream projections rebuild`: every read model rebuilt from offset zero into a fresh schema,
then made live in one transaction once it has caught up, while the live system keeps serving.

The same `apply_batch` as the live consumer applies the log, so the rebuilt models equal the live
ones (handlers are idempotent and independent of arrival order, docs/adr/0001). The switch holds
the pointer row exclusively: live batches wait, the last events are applied into the new schema,
the pointer, the dashboard views and a notification to the query APIs change together
(docs/adr/0006).

Each rebuild leaves the schema it replaced behind: previous_schemas.py lists and drops them.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import queue
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from aiokafka import TopicPartition
from tqdm import tqdm

from schemas.common import utcnow
from schemas.envelope import UndecodableEvent, unwrap
from services.database import (
    create_pool,
    ensure_read_model_pointer,
    migrate,
)
from services.log_reader import LogReader, Offsets
from services.projections.app import projected_topics
from services.projections.live_schema import lock_pointer, switch_live_schema
from services.projections.read_models import apply_batch
from services.projections.retention import cut_of, sweep
from services.settings import Settings

log = logging.getLogger(__name__)

# pg_try_advisory_lock key space: one rebuild per read-model name at a time.
_REBUILD_LOCK = "evalstream-rebuild:"


class RebuildRefused(RuntimeError):
    pass


@dataclass
class RebuildReport:
    name: str
    previous_schema: str
    schema: str
    events: int = 0
    applied: int = 0
    undecodable: int = 0
    truncated_partitions: int = 0
    seconds: float = 0.0
    switched_at: datetime | None = None

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return {"name": self.name, "previous_schema": self.previous_schema,
                "schema": self.schema, "events": self.events, "applied": self.applied,
                "undecodable": self.undecodable,
                "truncated_partitions": self.truncated_partitions,
                "seconds": round(self.seconds, 3), "events_per_second": round(self.rate),
                "switched_at": self.switched_at.isoformat() if self.switched_at else None}


_SUFFIX_FORMAT = "%Y%m%d%H%M%S"
_SUFFIX_LENGTH = 15  # "_" and 14 digits


def new_schema_name(name: str, at: datetime) -> str:
    suffix = f"_{at:{_SUFFIX_FORMAT}}"
    return name[:63 - len(suffix)] + suffix


async def rebuild(settings: Settings, *, progress: bool = True, batch_size: int = 5000,
                  allow_truncated: bool = False, switch: bool = True,
                  workers: int = 1) -> RebuildReport:
    """Rebuild into a new schema and (with `switch`) make it live; returns what was done.

    With `workers` > 1, the long first pass is shared by that many processes, each reading its
    share of the partitions with a connection of its own. That is safe because the handlers do
    not depend on arrival order (docs/adr/0001) and no two partitions write the same row: every
    read-model row is made by the events of one key, so of one partition. It pays because decoding
    and validating events in Python, not Postgres, is what limits one process."""
    loop = asyncio.get_running_loop()
    name = settings.read_model_schema
    admin = await asyncpg.connect(settings.dsn)
    reader = LogReader(settings, projected_topics(settings), client_id="evalstream-rebuild",
                       max_records=batch_size)
    pool: asyncpg.Pool | None = None
    created: str | None = None
    try:
        if not await admin.fetchval("SELECT pg_try_advisory_lock(hashtext($1))",
                                    _REBUILD_LOCK + name):
            raise RebuildRefused(f"another rebuild of {name} is running")
        previous = await ensure_read_model_pointer(admin, name)
        report = RebuildReport(name=name, previous_schema=previous,
                               schema=new_schema_name(name, utcnow()))
        await reader.start()
        begins = await reader.beginning_offsets()
        report.truncated_partitions = sum(1 for offset in begins.values() if offset > 0)
        if report.truncated_partitions and not allow_truncated:
            raise RebuildRefused(
                f"{report.truncated_partitions} partition(s) no longer start at offset 0 "
                "(retention deleted events): a rebuild would lose them; --allow-truncated "
                "rebuilds from what is left")
        await migrate(settings.dsn, "read_model", report.schema)
        created = report.schema
        pool = await create_pool(settings.dsn, report.schema, max_size=1)
        await _follow_retention(admin, previous, pool)  # old traffic is not even written
        started = loop.time()
        ends = await reader.end_offsets()
        with tqdm(total=await reader.remaining(ends), unit="ev", desc=f"rebuilding {name}",
                  disable=not progress) as bar:

            async def catch_up(until: Offsets) -> None:
                bar.total = bar.n + await reader.remaining(until)
                bar.refresh()
                await _apply_log(reader, pool, until, report, bar.update)

            if workers > 1:
                # The long pass, over the log as it was at the start, by `workers` processes;
                # this one goes on from where they stop (and fetches nothing before meanwhile).
                reader.seek(ends)
                await _parallel_pass(settings, report.schema, ends, workers, batch_size, report,
                                     bar.update)
            else:
                await catch_up(ends)
            # What arrived during the long pass, so the switch below has little left to do.
            await catch_up(await reader.end_offsets())
            if switch:
                async with admin.transaction():
                    # From here live batches wait; whatever they applied to the old schema is
                    # in the log before the end offsets taken next.
                    report.previous_schema = await lock_pointer(admin, name)
                    await catch_up(await reader.end_offsets())
                    await _follow_retention(admin, report.previous_schema, pool)
                    await switch_live_schema(admin, name, report.schema,
                                             getattr(settings, "dashboard_schema", None))
                report.switched_at = utcnow()
        report.seconds = loop.time() - started
        return report
    except BaseException:
        if created is not None and report.switched_at is None:
            # A half-built copy nobody reads: gone, so the next attempt starts clean.
            if pool is not None:
                await pool.close()
                pool = None
            await admin.execute(f'DROP SCHEMA IF EXISTS "{created}" CASCADE')
        raise
    finally:
        await reader.stop()
        if pool is not None:
            await pool.close()
        await admin.close()  # also releases the advisory lock


async def _follow_retention(admin: asyncpg.Connection, live: str, pool: asyncpg.Pool) -> None:
    """The new schema keeps what the live one keeps (docs/adr/0017): the live watermark, and the
    rows before it swept. Before the long pass that only sets it; at the switch it also deletes
    what arrived before a watermark the live sweeper raised meanwhile."""
    before = await cut_of(admin, live)
    if before is None:
        return  # nothing was ever swept there
    async with pool.acquire() as conn:
        await sweep(conn, before)


def _decode(records: list, report: RebuildReport) -> list:
    envelopes = []
    for record in records:
        try:
            envelopes.append(unwrap(record.headers, record.value))
        except UndecodableEvent:
            report.undecodable += 1  # the live consumer dead-lettered it already
    return envelopes


async def _apply(pool: asyncpg.Pool, envelopes: list, records: int,
                 report: RebuildReport) -> int:
    for attempt in range(1, 6):
        try:
            async with pool.acquire() as conn, conn.transaction():
                applied = await apply_batch(conn, envelopes)
            break
        except asyncpg.DeadlockDetectedError:
            # Parallel workers only meet on rows of the same key (a repeated event id in
            # applied_events, say); Postgres undid one transaction, which is simply retried.
            if attempt == 5:
                raise
            await asyncio.sleep(0.05 * attempt)
    report.applied += applied
    report.events += records
    return records


async def _apply_log(reader: LogReader, pool: asyncpg.Pool, until: Offsets,
                     report: RebuildReport, on_batch: Callable[[int], object]) -> None:
    """Everything from the reader's positions up to `until`, into the pool's schema; decoding the
    next batch overlaps Postgres applying this one."""
    applying: asyncio.Task | None = None
    async for batch in reader.batches(until):
        envelopes = _decode(batch, report)
        if applying is not None:
            on_batch(await applying)
        applying = asyncio.create_task(_apply(pool, envelopes, len(batch), report))
    if applying is not None:
        on_batch(await applying)


def _shares(partitions: Collection[TopicPartition], workers: int) -> list[list[TopicPartition]]:
    """Partitions dealt out in turn, topic by topic, so each worker gets a part of each topic."""
    ordered = sorted(partitions)
    return [share for share in (ordered[i::workers] for i in range(workers)) if share]


async def _parallel_pass(settings: Settings, schema: str, until: Offsets, workers: int,
                         batch_size: int, report: RebuildReport,
                         on_batch: Callable[[int], object]) -> None:
    """Up to `until` into `schema` by worker processes; adds their counts to `report`."""
    context = multiprocessing.get_context("spawn")  # no inherited event loop or connections
    messages = context.Queue()
    processes = [context.Process(
        target=_worker_main, name=f"evalstream-rebuild-{n}", daemon=True,
        args=(settings, schema, {tp: until[tp] for tp in share}, batch_size, messages))
        for n, share in enumerate(_shares(until, workers))]
    for process in processes:
        process.start()
    finished = 0
    try:
        while finished < len(processes):
            try:
                kind, *values = messages.get_nowait()
            except queue.Empty:
                if any(p.exitcode not in (None, 0) for p in processes):
                    raise RuntimeError("a rebuild worker exited; see its log above") from None
                await asyncio.sleep(0.05)
                continue
            if kind == "batch":
                on_batch(values[0])
            elif kind == "done":
                finished += 1
                report.events += values[0]
                report.applied += values[1]
                report.undecodable += values[2]
            else:
                raise RuntimeError(f"a rebuild worker failed: {values[0]}")
    finally:
        for process in processes:
            if process.is_alive() and finished < len(processes):
                process.terminate()
            process.join()


def _worker_main(settings: Settings, schema: str, until: Offsets, batch_size: int,
                 messages: multiprocessing.Queue) -> None:
    from services.cli import tune_gc

    tune_gc()
    try:
        counts = asyncio.run(_worker(settings, schema, until, batch_size, messages))
    except BaseException as e:
        messages.put(("error", f"{type(e).__name__}: {e}"))
        raise
    messages.put(("done", counts.events, counts.applied, counts.undecodable))


async def _worker(settings: Settings, schema: str, until: Offsets, batch_size: int,
                  messages: multiprocessing.Queue) -> RebuildReport:
    counts = RebuildReport(name=settings.read_model_schema, previous_schema="", schema=schema)
    reader = LogReader(settings, sorted({tp.topic for tp in until}), max_records=batch_size,
                       client_id="evalstream-rebuild-worker", only=until)
    pool = await create_pool(settings.dsn, schema, max_size=1)
    try:
        await reader.start()
        await _apply_log(reader, pool, until, counts,
                         lambda n: messages.put(("batch", n)))
    finally:
        await reader.stop()
        await pool.close()
    return counts
