"""Postgres access shared by the services: connection pools and schema migrations (Alembic).

Each service owns one schema: ingest the catalog, projections the read models. Alembic runs the
migrations of a schema; the schema name is a parameter so that a rebuild can create a fresh copy.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import asyncpg
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


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb columns travel as Python objects both ways.
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads,
                              schema="pg_catalog")


async def create_pool(dsn: str, schema: str, *, min_size: int = 1,
                      max_size: int = 10) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection,
        server_settings={"search_path": checked_schema(schema), "application_name": "evalstream"})
