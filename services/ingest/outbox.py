"""The outbox relay: publishes catalog events committed to the outbox table, in commit order.

One relay publishes at a time (a Postgres advisory lock), so events of one dataset keep their order
even with several ingest instances. A crash between publish and delete republishes the same events
with the same ids, which consumers skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from services.ingest.catalog import OUTBOX_CHANNEL, outbox_headers
from services.messaging import EventPublisher

log = logging.getLogger(__name__)
_LOCK_KEY = 0x65766F7574  # "evout"


async def relay_once(pool: asyncpg.Pool, publisher: EventPublisher, limit: int = 1000) -> int:
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _LOCK_KEY):
            return 0
        rows = await conn.fetch(
            "SELECT seq, topic, key, headers, body FROM outbox ORDER BY seq LIMIT $1", limit)
        if not rows:
            return 0
        by_topic: dict[str, list] = {}
        for r in rows:
            by_topic.setdefault(r["topic"], []).append(
                (r["key"].encode() if r["key"] else None, r["body"], outbox_headers(r["headers"])))
        for topic, records in by_topic.items():
            await publisher.publish_raw(topic, records)
        await conn.execute("DELETE FROM outbox WHERE seq = ANY($1)", [r["seq"] for r in rows])
        return len(rows)


async def run_relay(pool: asyncpg.Pool, publisher: EventPublisher, idle_wait: float = 1.0, *,
                    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
    """Relay until cancelled; wakes on NOTIFY from a committing transaction, else polls; after
    a failure waits with `sleep`, twice as long each time up to 30 s."""
    wake = asyncio.Event()
    listener = await pool.acquire()

    def on_notify(*_: object) -> None:
        wake.set()

    await listener.add_listener(OUTBOX_CHANNEL, on_notify)
    failures = 0
    try:
        while True:
            try:
                relayed = await relay_once(pool, publisher)
            except Exception as e:  # the relay must outlive a broker or database outage
                failures += 1
                # Waits double up to half a minute: one warning per attempt, not per second.
                wait = min(idle_wait * 2 ** (failures - 1), 30.0)
                log.warning("outbox relay failed (attempt %d), retrying in %.0f s: %s",
                            failures, wait, e)
                await sleep(wait)
                continue
            if failures:
                log.warning("outbox relay working again after %d failure(s)", failures)
                failures = 0
            if relayed:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), idle_wait)
            wake.clear()
    finally:
        with contextlib.suppress(Exception):
            await listener.remove_listener(OUTBOX_CHANNEL, on_notify)
        await pool.release(listener)
