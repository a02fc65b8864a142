"""A throwaway read-model schema for integration tests: migrate it, apply batches of events as the
projection consumer does (one transaction each), answer a query, drop it."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import asyncpg

from schemas.envelope import Envelope
from services.database import create_pool, migrate
from services.projections.read_models import apply_batch

T = TypeVar("T")


async def project(dsn: str, batches: Sequence[Sequence[Envelope]],
                  query: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    schema = f"rm_{uuid.uuid4().hex[:10]}"
    await migrate(dsn, "read_model", schema)
    pool = await create_pool(dsn, schema)
    try:
        async with pool.acquire() as conn:
            for batch in batches:
                async with conn.transaction():
                    await apply_batch(conn, batch)
            return await query(conn)
    finally:
        await pool.close()
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        finally:
            await admin.close()


async def build(dsn: str, events: Sequence[Envelope]) -> str:
    """A read-model schema holding `events` (applied as one batch), left for the caller to read
    and drop; its name."""
    schema = f"rm_{uuid.uuid4().hex[:10]}"
    await migrate(dsn, "read_model", schema)
    pool = await create_pool(dsn, schema, max_size=1)
    try:
        async with pool.acquire() as conn, conn.transaction():
            await apply_batch(conn, events)
    finally:
        await pool.close()
    return schema
