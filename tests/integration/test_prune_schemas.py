"""Listing and dropping the read-model schemas rebuilds leave behind, against a real Postgres:
`read_model_schemas`, `drop_previous_schemas` and the `evalstream projections schemas` and
`drop-previous` commands. Each test has a read-model name of its own, so the session's read
models (and a shared database) are never touched."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import uuid4

import asyncpg
import pytest
from typer.testing import CliRunner

from services.cli import app
from services.database import POINTER_TABLE, ensure_read_model_pointer, migrate
from services.projections.live_schema import lock_pointer, switch_live_schema
from services.projections.previous_schemas import (
    DropRefused,
    drop_previous_schemas,
    read_model_schemas,
)
from services.projections.rebuild import _REBUILD_LOCK
from services.settings import Settings

pytestmark = pytest.mark.postgres

# Suffixes of three rebuilds, oldest first.
BUILT = ("20261101000000", "20261115120000", "20261130235959")


@dataclass
class Model:
    settings: Settings
    conn: asyncpg.Connection
    created: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.settings.read_model_schema

    def built(self, suffix: str) -> str:
        return f"{self.name}_{suffix}"

    def decoys(self) -> list[str]:
        """Names close to this read model's that are not its schemas."""
        return [f"{self.name}x_20260101000000",           # another name, then a suffix
                f"{self.name}_2026",                      # too few digits
                f"{self.name}_202601010000000",           # too many
                f"{self.name}_20261399999999",            # 14 digits but no time
                self.name.replace("_", "x", 1) + "_20260101000000"]  # what LIKE's _ would match

    async def create(self, live: str) -> None:
        """The configured schema, one schema per BUILT rebuild, the decoys, and the pointer on
        `live`."""
        for schema in [self.name, *map(self.built, BUILT)]:
            self.created.append(schema)
            await migrate(self.settings.dsn, "read_model", schema)
        for schema in self.decoys():
            self.created.append(schema)
            await self.conn.execute(f'CREATE SCHEMA "{schema}"')
            await self.conn.execute(f'CREATE TABLE "{schema}".t AS SELECT 1 AS x')
        await self.switch(live)

    async def switch(self, live: str) -> None:
        await ensure_read_model_pointer(self.conn, self.name)
        async with self.conn.transaction():
            await lock_pointer(self.conn, self.name)
            await switch_live_schema(self.conn, self.name, live, dashboard_schema=None)

    async def existing(self) -> set[str]:
        rows = await self.conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname = ANY($1)",
                                     self.created)
        return {r["nspname"] for r in rows}

    async def size(self, schema: str) -> int:
        """What its tables take, computed apart from the code under test."""
        return await self.conn.fetchval(
            "SELECT coalesce(sum(pg_total_relation_size(format('%I.%I', schemaname, tablename)"
            "::regclass)), 0)::bigint FROM pg_tables WHERE schemaname = $1", schema)


@pytest.fixture
async def model(migrated: Settings):
    settings = migrated.model_copy(update={"read_model_schema": f"rm_{uuid4().hex[:8]}"})
    conn = await asyncpg.connect(settings.dsn)
    m = Model(settings, conn)
    try:
        yield m
    finally:
        for schema in m.created:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.execute(f"DELETE FROM {POINTER_TABLE} WHERE name = $1", m.name)
        await conn.close()


async def test_lists_the_schemas_newest_first_with_the_live_one(model: Model):
    old, middle, new = map(model.built, BUILT)
    await model.create(live=middle)

    schemas = await read_model_schemas(model.settings)

    assert [s.name for s in schemas] == [new, middle, old, model.name]
    assert [s.live for s in schemas] == [False, True, False, False]
    assert [s.built_at for s in schemas] == [
        datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC),
        datetime(2026, 11, 15, 12, 0, 0, tzinfo=UTC),
        datetime(2026, 11, 1, 0, 0, 0, tzinfo=UTC), None]
    for s in schemas:
        assert s.size_bytes == await model.size(s.name)
        assert s.size_bytes > 0  # migrated: tables with their indexes
    # A schema grows with what its tables hold.
    await model.conn.execute(f'CREATE TABLE "{old}".filler AS '
                             "SELECT repeat('x', 100) AS v FROM generate_series(1, 5000)")
    grown = {s.name: s.size_bytes for s in await read_model_schemas(model.settings)}
    assert grown[old] == await model.size(old) > schemas[2].size_bytes
    assert grown[new] == schemas[0].size_bytes


async def test_before_any_rebuild_the_configured_schema_is_live(model: Model):
    model.created.append(model.name)
    await migrate(model.settings.dsn, "read_model", model.name)

    [only] = await read_model_schemas(model.settings)

    assert (only.name, only.live, only.built_at) == (model.name, True, None)
    assert await drop_previous_schemas(model.settings) == []
    assert await model.existing() == {model.name}


async def test_drop_keeps_the_live_schema_and_the_newest_previous_ones(model: Model):
    old, middle, new = map(model.built, BUILT)
    await model.create(live=middle)

    dropped = await drop_previous_schemas(model.settings, keep=1)

    # Not live, newest first: new, old, the configured one; the newest is kept.
    assert dropped == [old, model.name]
    assert await model.existing() == {middle, new, *model.decoys()}
    assert [(s.name, s.live) for s in await read_model_schemas(model.settings)] == [
        (new, False), (middle, True)]
    # The pointer is untouched.
    assert await model.conn.fetchval(
        f"SELECT live_schema FROM {POINTER_TABLE} WHERE name = $1", model.name) == middle

    assert await drop_previous_schemas(model.settings, keep=0) == [new]
    assert await model.existing() == {middle, *model.decoys()}
    assert await drop_previous_schemas(model.settings, keep=0) == []


async def test_dry_run_drops_nothing(model: Model):
    old, middle, new = map(model.built, BUILT)
    await model.create(live=new)
    before = await model.existing()

    assert await drop_previous_schemas(model.settings, dry_run=True) == [middle, old, model.name]
    assert await drop_previous_schemas(model.settings, keep=2, dry_run=True) == [model.name]
    assert await drop_previous_schemas(model.settings, keep=5, dry_run=True) == []
    assert await model.existing() == before == set(model.created)


async def test_only_what_was_confirmed_is_dropped(model: Model):
    old, middle, new = map(model.built, BUILT)
    await model.create(live=new)

    assert await drop_previous_schemas(model.settings, only=[old, new]) == [old]
    assert await model.existing() == {model.name, middle, new, *model.decoys()}


async def test_refused_while_views_elsewhere_read_what_would_be_dropped(model: Model):
    old, middle, new = map(model.built, BUILT)
    await model.create(live=new)
    elsewhere = f"{model.name}_views"
    model.created.append(elsewhere)
    await model.conn.execute(f'CREATE SCHEMA "{elsewhere}"')
    await model.conn.execute(f'CREATE VIEW "{elsewhere}".old_runs AS SELECT * FROM "{old}".runs')

    with pytest.raises(DropRefused, match=rf"{elsewhere}\.old_runs \(on {old}\)"):
        await drop_previous_schemas(model.settings, dry_run=True)
    with pytest.raises(DropRefused, match=rf"{elsewhere}\.old_runs \(on {old}\)"):
        await drop_previous_schemas(model.settings)
    assert await model.existing() == set(model.created)
    # Keeping the schema it reads, or within the schemas dropped (CASCADE), is fine.
    assert await drop_previous_schemas(model.settings, keep=2) == [model.name]
    await model.conn.execute(f'CREATE VIEW "{middle}".old_runs AS SELECT * FROM "{old}".runs')
    await model.conn.execute(f'DROP VIEW "{elsewhere}".old_runs')
    assert await drop_previous_schemas(model.settings) == [middle, old]
    assert await model.existing() == {new, elsewhere, *model.decoys()}


async def test_refused_while_a_rebuild_runs(model: Model):
    old, middle, new = map(model.built, BUILT)
    await model.create(live=middle)
    rebuilding = await asyncpg.connect(model.settings.dsn)
    try:
        # What `rebuild` holds from start to end.
        await rebuilding.execute("SELECT pg_advisory_lock(hashtext($1))",
                                 _REBUILD_LOCK + model.name)
        with pytest.raises(DropRefused, match="rebuild .* is running"):
            await drop_previous_schemas(model.settings)
        assert await model.existing() == set(model.created)
    finally:
        await rebuilding.close()
    assert await drop_previous_schemas(model.settings) == [new, old, model.name]


async def test_a_switch_in_progress_is_waited_for_and_its_new_schema_kept(model: Model):
    old, middle, new = map(model.built, BUILT)
    await model.create(live=middle)
    switching = await asyncpg.connect(model.settings.dsn)
    try:
        tx = switching.transaction()
        await tx.start()
        # As `rebuild` does: the pointer held through the final catch-up, then the switch.
        await lock_pointer(switching, model.name)
        dropping = asyncio.create_task(drop_previous_schemas(model.settings))
        # Wait until the drop is blocked on the pointer row the switch holds.
        blocker = switching.get_server_pid()
        for _ in range(200):
            if await model.conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                    blocker):
                break
            await asyncio.sleep(0.025)
        else:
            pytest.fail("the drop did not wait for the pointer row")
        assert not dropping.done()
        await switch_live_schema(switching, model.name, new, dashboard_schema=None)
        await tx.commit()
        # The live schema was read again once the switch committed: `new` is kept, `middle` goes.
        assert await dropping == [middle, old, model.name]
    finally:
        await switching.close()
    assert await model.existing() == {new, *model.decoys()}


def _cli(model: Model, *args: str, input: str | None = None):  # noqa: A002
    env = {"DATABASE_URL": model.settings.dsn,
           "EVALSTREAM_READ_MODEL_SCHEMA": model.name,
           "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",  # not contacted
           "EVALSTREAM_LOG_LEVEL": "WARNING"}
    # The commands run their own event loop (asyncio.run): not on this test's thread.
    return asyncio.to_thread(CliRunner().invoke, app, ["projections", *args], input=input,
                             env=env)


async def test_the_commands(model: Model):
    old, middle, new = map(model.built, BUILT)
    await model.create(live=new)

    result = await _cli(model, "schemas", "--json")
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert [(s["schema"], s["live"], s["built_at"]) for s in listed] == [
        (new, True, "2026-11-30T23:59:59+00:00"), (middle, False, "2026-11-15T12:00:00+00:00"),
        (old, False, "2026-11-01T00:00:00+00:00"), (model.name, False, None)]
    for s in listed:
        assert s["size_bytes"] == await model.size(s["schema"]) > 0

    result = await _cli(model, "schemas")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["schema", "live", "size", "MB", "built", "at"]
    assert [line.split()[:2] for line in lines[1:]] == [
        [new, "yes"], [middle, "no"], [old, "no"], [model.name, "no"]]
    assert lines[1].split()[3:] == ["2026-11-30", "23:59:59", "UTC"]
    assert lines[4].split()[3:] == ["-"]

    result = await _cli(model, "drop-previous", "--dry-run", "--keep", "1")
    assert result.exit_code == 0, result.output
    assert "would drop:" in result.stdout
    assert [line.split()[0] for line in result.stdout.splitlines()[1:]] == [old, model.name]
    assert await model.existing() == set(model.created)

    # Asked, and declined.
    result = await _cli(model, "drop-previous", "--keep", "1", input="n\n")
    assert result.exit_code == 1
    assert f"  {old} (" in result.stdout and f"  {model.name} (" in result.stdout
    assert middle not in result.stdout
    assert "drop 2 schema(s)" in result.stdout
    assert await model.existing() == set(model.created)

    # Asked, and confirmed.
    result = await _cli(model, "drop-previous", "--keep", "1", input="y\n")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-2:] == [f"dropped {old}", f"dropped {model.name}"]
    assert await model.existing() == {middle, new, *model.decoys()}

    result = await _cli(model, "drop-previous", "--yes")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [f"dropped {middle}"]
    assert await model.existing() == {new, *model.decoys()}

    result = await _cli(model, "drop-previous", "--yes")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["no previous schema to drop"]
