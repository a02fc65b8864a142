"""The Alembic environment both migration trees share: async engine, one schema per tree."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine


def _run(connection) -> None:
    schema = context.config.attributes["schema"]
    connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    connection.execute(text(f'SET search_path TO "{schema}"'))
    context.configure(connection=connection, version_table_schema=schema,
                      transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


async def _main() -> None:
    engine = create_async_engine(context.config.attributes["url"])
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


def run() -> None:
    if context.is_offline_mode():
        raise SystemExit("evalstream migrations run online only")
    asyncio.run(_main())


def execute_script(op, sql: str) -> None:
    """Run a multi-statement DDL script; asyncpg prepares each statement, so one at a time."""
    for statement in sql.split(";\n"):
        if statement.strip():
            op.execute(statement)
