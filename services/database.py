"""Postgres access shared by the services: connection pools and schema migrations (Alembic).

Each service owns one schema: ingest the catalog, projections the read models. Alembic runs the
migrations of a schema; the schema name is a parameter so that a rebuild can create a fresh copy.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import asyncpg
import pydantic_core
from alembic import command
from alembic.config import Config

from services.settings import Settings

SERVICES = Path(__file__).parent
MIGRATIONS = {
    "catalog": SERVICES / "ingest" / "migrations",
    "read_model": SERVICES / "projections" / "migrations",
}
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def checked_schema(name: str) -> str:
    """Schema names are interpolated into DDL, so only plain identifiers are allowed."""
    if not _SCHEMA_NAME.match(name):
        raise ValueError(f"invalid schema name {name!r}")
    return name


def _alembic_config(dsn: str, kind: str, schema: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS[kind]))
    cfg.attributes["url"] = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    cfg.attributes["schema"] = checked_schema(schema)
    return cfg


async def migrate(dsn: str, kind: str, schema: str) -> None:
    """Bring `schema` to the newest revision of the `kind` migrations (idempotent)."""
    # Alembic's async env runs its own event loop, so it gets a thread of its own.
    await asyncio.to_thread(command.upgrade, _alembic_config(dsn, kind, schema), "head")


async def migrate_all(settings: Settings) -> None:
    await migrate(settings.dsn, "catalog", settings.catalog_schema)
    await migrate(settings.dsn, "read_model", settings.read_model_schema)
    # After a rebuild the live read models are in another schema (the pointer names it): that
    # one gets the same migrations, and the dashboard views read it.
    live = await live_read_model_schema(settings.dsn, settings.read_model_schema)
    if live != settings.read_model_schema:
        await migrate(settings.dsn, "read_model", live)
    # The dashboard views live in a schema of their own over the read models (docs/dashboards.md).
    from services.projections.dashboard import create_dashboard_views

    conn = await asyncpg.connect(settings.dsn)
    try:
        await create_dashboard_views(conn, live, settings.dashboard_schema,
                                     reader_password=settings.reader_password)
    finally:
        await conn.close()


# Which schema holds the live read models, per configured read-model name. It lives apart from
# every read-model schema so that a rebuild can create, switch to and drop schemas freely.
POINTER_SCHEMA = "evalstream"
POINTER_TABLE = f"{POINTER_SCHEMA}.read_models"
LIVE_SCHEMA_CHANNEL = "evalstream_read_model"  # NOTIFY payload: the read-model name switched


async def ensure_read_model_pointer(conn: asyncpg.Connection, name: str) -> str:
    """Create the pointer (pointing at the schema called `name`) unless it exists; returns the
    schema holding the live read models."""
    async with conn.transaction():
        # CREATE ... IF NOT EXISTS still races with itself; the lock makes it idempotent.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('evalstream.read_models'))")
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {POINTER_SCHEMA}")
        await conn.execute(f"""
            CREATE TABLE IF NOT EXISTS {POINTER_TABLE} (
                name            text PRIMARY KEY,
                live_schema     text NOT NULL,
                previous_schema text,
                switched_at     timestamptz
            )""")
        await conn.execute(f"INSERT INTO {POINTER_TABLE} (name, live_schema) VALUES ($1, $1)"
                           " ON CONFLICT DO NOTHING", checked_schema(name))
        return await conn.fetchval(
            f"SELECT live_schema FROM {POINTER_TABLE} WHERE name = $1", name)


async def live_read_model_schema(dsn: str, name: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return await ensure_read_model_pointer(conn, name)
    finally:
        await conn.close()


def decode_jsonb(text: str) -> Any:
    """A jsonb value as Python objects: what json.loads gives, by pydantic's JSON parser (Rust),
    which takes a fifth of the time on small values (ingest decodes the input and expected
    output of every trace's dataset item). Whatever it refuses (nesting deeper than 255, say),
    json.loads decides, as before."""
    try:
        return pydantic_core.from_json(text)
    except ValueError:
        return json.loads(text)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb columns travel as Python objects both ways.
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=decode_jsonb,
                              schema="pg_catalog")


async def create_pool(dsn: str, schema: str, *, min_size: int = 1,
                      max_size: int = 10) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection,
        # No JIT: every statement here is a short batch statement, and a batch whose estimated
        # cost crosses jit_above_cost spent ~0.5 s compiling before doing 10 ms of work.
        server_settings={"search_path": checked_schema(schema), "application_name": "evalstream",
                         "jit": "off"})
