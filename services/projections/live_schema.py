"""Which Postgres schema holds the live read models, and how everyone follows a switch.

The pointer (`evalstream.read_models`, services/database.py) names the live schema. The live
consumer looks it up in every batch's transaction under a share lock; a rebuild takes the row
exclusively, catches up and switches it, so no batch lands in the old schema after the switch; the
query API keeps its pool on the live schema and moves over when notified (docs/adr/0006).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg

from services.database import (
    LIVE_SCHEMA_CHANNEL,
    POINTER_TABLE,
    checked_schema,
    create_pool,
    ensure_read_model_pointer,
)

log = logging.getLogger(__name__)

# A missed notification (a dropped listening connection) is made good by looking again this often.
RECHECK_SECONDS = 5.0


async def enter_live_schema(conn: asyncpg.Connection, name: str) -> str:
    """Within a batch's transaction: set search_path to the live schema and hold the pointer
    row's share lock until commit. One round trip; while a rebuild switches, this waits and then
    returns the new schema (Postgres re-reads a locked row once its updater commits)."""
    schema = await conn.fetchval(
        f"SELECT set_config('search_path', live_schema, true) FROM {POINTER_TABLE}"
        " WHERE name = $1 FOR SHARE", name)
    if schema is None:
        raise RuntimeError(f"no read-model pointer for {name!r}; run `evalstream migrate`")
    return schema


async def lock_pointer(conn: asyncpg.Connection, name: str) -> str:
    """Within the switching transaction: hold the pointer exclusively (live batches wait) and
    return the schema that is live now."""
    return await conn.fetchval(
        f"SELECT live_schema FROM {POINTER_TABLE} WHERE name = $1 FOR UPDATE", name)


async def switch_live_schema(conn: asyncpg.Connection, name: str, schema: str,
                             dashboard_schema: str | None) -> None:
    """Within the transaction that holds the pointer: make `schema` live, re-point the dashboard
    views at it, and notify the query APIs (delivered when the transaction commits)."""
    await conn.execute(
        f"UPDATE {POINTER_TABLE} SET previous_schema = live_schema, live_schema = $2,"
        " switched_at = now() WHERE name = $1", name, checked_schema(schema))
    if dashboard_schema:
        try:
            from services.projections.dashboard import create_dashboard_views
        except ImportError:
            pass
        else:
            await create_dashboard_views(conn, schema, dashboard_schema)
    await conn.execute("SELECT pg_notify($1, $2)", LIVE_SCHEMA_CHANNEL, name)


class LiveReadModelPool:
    """A connection pool on the live read-model schema, replaced by one on the new schema when a
    rebuild switches; requests in flight finish on the old pool, which then closes."""

    def __init__(self, dsn: str, name: str, *, max_size: int = 10,
                 on_switch: Callable[[asyncpg.Pool], None] | None = None):
        self.dsn, self.name, self.max_size = dsn, name, max_size
        self.on_switch = on_switch
        self.schema: str | None = None
        self.pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._retiring: set[asyncio.Task] = set()

    async def start(self) -> asyncpg.Pool:
        await self._listen()
        self.schema = await ensure_read_model_pointer(self._listener, self.name)
        self.pool = await create_pool(self.dsn, self.schema, max_size=self.max_size)
        self._task = asyncio.create_task(self._follow(), name="follow-live-read-model")
        return self.pool

    async def _listen(self) -> None:
        self._listener = await asyncpg.connect(self.dsn)
        await self._listener.add_listener(LIVE_SCHEMA_CHANNEL, self._on_notify)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        if payload == self.name:
            self._wake.set()

    async def _follow(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), RECHECK_SECONDS)
            self._wake.clear()
            try:
                if self._listener is None or self._listener.is_closed():
                    await self._listen()
                await self.refresh()
            except Exception as e:  # keep serving from the current pool; look again later
                log.warning("cannot check the live read-model schema: %s", e)
                if self._listener is not None:
                    with contextlib.suppress(Exception):
                        await self._listener.close()
                self._listener = None

    async def refresh(self) -> None:
        live = await self._listener.fetchval(
            f"SELECT live_schema FROM {POINTER_TABLE} WHERE name = $1", self.name)
        if live is None or live == self.schema:
            return
        new = await create_pool(self.dsn, live, max_size=self.max_size)
        old, self.pool, self.schema = self.pool, new, live
        if self.on_switch is not None:
            self.on_switch(new)
        log.info("query API now reads read models in schema %s", live)
        task = asyncio.create_task(self._retire(old))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    @staticmethod
    async def _retire(pool: asyncpg.Pool) -> None:
        try:
            await asyncio.wait_for(pool.close(), 60)  # waits for requests still using it
        except TimeoutError:
            pool.terminate()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._retiring):
            await task
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
        if self.pool is not None:
            await self.pool.close()
