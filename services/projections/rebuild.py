"""`evalstream projections rebuild`: every read model rebuilt from offset zero into a fresh schema,
then made live in one transaction once it has caught up, while the live system keeps serving.

The same `apply_batch` as the live consumer applies the log, so the rebuilt models equal the live
ones (handlers are idempotent and independent of arrival order, docs/adr/0001). The switch holds
the pointer row exclusively: live batches wait, the last events are applied into the new schema,
the pointer, the dashboard views and a notification to the query APIs change together
(docs/adr/0006).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from tqdm import tqdm

from schemas.common import utcnow
from schemas.envelope import UndecodableEvent, unwrap
from services.database import create_pool, ensure_read_model_pointer, migrate
from services.log_reader import LogReader, Offsets
from services.projections.app import projected_topics
from services.projections.live_schema import lock_pointer, switch_live_schema
from services.projections.read_models import apply_batch
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


def new_schema_name(name: str, at: datetime) -> str:
    suffix = f"_{at:%Y%m%d%H%M%S}"
    return name[:63 - len(suffix)] + suffix


async def rebuild(settings: Settings, *, progress: bool = True, batch_size: int = 5000,
                  allow_truncated: bool = False, switch: bool = True) -> RebuildReport:
    """Rebuild into a new schema and (with `switch`) make it live; returns what was done."""
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
        started = loop.time()
        ends = await reader.end_offsets()
        with tqdm(total=await reader.remaining(ends), unit="ev", desc=f"rebuilding {name}",
                  disable=not progress) as bar:

            async def catch_up(until: Offsets) -> None:
                bar.total = bar.n + await reader.remaining(until)
                bar.refresh()
                # Decoding the next batch overlaps Postgres applying this one.
                applying: asyncio.Task | None = None
                async for batch in reader.batches(until):
                    envelopes = _decode(batch, report)
                    if applying is not None:
                        bar.update(await applying)
                    applying = asyncio.create_task(_apply(pool, envelopes, len(batch), report))
                if applying is not None:
                    bar.update(await applying)

            await catch_up(ends)
            # What arrived during the long pass, so the switch below has little left to do.
            await catch_up(await reader.end_offsets())
            if switch:
                async with admin.transaction():
                    # From here live batches wait; whatever they applied to the old schema is
                    # in the log before the end offsets taken next.
                    report.previous_schema = await lock_pointer(admin, name)
                    await catch_up(await reader.end_offsets())
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
    async with pool.acquire() as conn, conn.transaction():
        report.applied += await apply_batch(conn, envelopes)
    report.events += records
    return records
