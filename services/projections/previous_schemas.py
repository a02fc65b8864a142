"""The schemas rebuilds leave behind: `read_model_schemas` lists a read model's schemas (the
configured one and `<name>_<yyyymmddHHMMSS>` of each rebuild), which is live and their sizes;
`drop_previous_schemas` drops those no longer live (`evalstream projections schemas`,
`evalstream projections drop-previous`, docs/adr/0006)."""

from __future__ import annotations

import logging
import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from services.database import POINTER_TABLE, checked_schema, ensure_read_model_pointer
from services.projections.live_schema import lock_pointer
from services.projections.rebuild import _REBUILD_LOCK, _SUFFIX_FORMAT, _SUFFIX_LENGTH
from services.settings import Settings

log = logging.getLogger(__name__)

_BEFORE_ALL = datetime.min.replace(tzinfo=UTC)

# How long dropping waits for a lock (the pointer row, or a table of a dropped schema that someone
# still reads) before giving up: while it waits with the pointer held, live batches wait too.
DROP_LOCK_TIMEOUT = "5s"


class DropRefused(RuntimeError):
    pass


@dataclass(frozen=True)
class SchemaInfo:
    name: str
    live: bool
    size_bytes: int
    built_at: datetime | None  # from the name's suffix; None for the configured schema itself

    def as_dict(self) -> dict:
        return {"schema": self.name, "live": self.live, "size_bytes": self.size_bytes,
                "built_at": self.built_at.isoformat() if self.built_at else None}


def _built_at(name: str, schema: str) -> datetime | None:
    """When a rebuild of `name` created `schema` (from its suffix), or None if `schema` is not
    one of those (`new_schema_name` shortens long names to make room for the suffix)."""
    prefix = name[:63 - _SUFFIX_LENGTH] + "_"
    suffix = schema[len(prefix):]
    if not (schema.startswith(prefix) and len(suffix) == 14 and suffix.isascii()
            and suffix.isdigit()):
        return None
    try:
        return datetime.strptime(suffix, _SUFFIX_FORMAT).replace(tzinfo=UTC)
    except ValueError:  # 14 digits that are no time: not a name a rebuild gave
        return None


async def _schemas(conn: asyncpg.Connection, name: str, live: str) -> list[SchemaInfo]:
    prefix = checked_schema(name)[:63 - _SUFFIX_LENGTH]
    rows = await conn.fetch(
        """
        SELECT n.nspname AS schema,
               coalesce(sum(pg_total_relation_size(c.oid))
                        FILTER (WHERE c.relkind IN ('r', 'p', 'm')), 0)::bigint AS size
        FROM pg_namespace n LEFT JOIN pg_class c ON c.relnamespace = n.oid
        WHERE n.nspname = $1 OR n.nspname ~ $2
        GROUP BY n.nspname
        """, name, f"^{re.escape(prefix)}_[0-9]{{14}}$")
    infos = []
    for row in rows:
        built_at = None if row["schema"] == name else _built_at(name, row["schema"])
        if row["schema"] == name or built_at is not None:
            infos.append(SchemaInfo(name=row["schema"], live=row["schema"] == live,
                                    size_bytes=row["size"], built_at=built_at))
    # Newest first; the configured schema, the first of all, last.
    infos.sort(key=lambda i: (i.built_at or _BEFORE_ALL, i.name), reverse=True)
    return infos


async def _views_outside(conn: asyncpg.Connection, schemas: list[str]) -> list[str]:
    """Views outside `schemas` over tables in them (dashboards pointed at an old schema, say)."""
    rows = await conn.fetch(
        """
        SELECT DISTINCT vn.nspname || '.' || v.relname || ' (on ' || tn.nspname || ')' AS view
        FROM pg_depend d
        JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid
        JOIN pg_class v ON v.oid = r.ev_class
        JOIN pg_namespace vn ON vn.oid = v.relnamespace
        JOIN pg_class t ON d.refclassid = 'pg_class'::regclass AND t.oid = d.refobjid
        JOIN pg_namespace tn ON tn.oid = t.relnamespace
        WHERE tn.nspname = ANY($1::text[]) AND NOT vn.nspname = ANY($1::text[])
        ORDER BY 1
        """, schemas)
    return [r["view"] for r in rows]


async def read_model_schemas(settings: Settings) -> list[SchemaInfo]:
    """Every schema of the configured read model, newest first: the one called
    `read_model_schema` and those rebuilds created (`<name>_<yyyymmddHHMMSS>`), which one is live,
    and their sizes (tables with their indexes and TOAST)."""
    name = settings.read_model_schema
    conn = await asyncpg.connect(settings.dsn)
    try:
        live = None
        if await conn.fetchval("SELECT to_regclass($1)", POINTER_TABLE) is not None:
            live = await conn.fetchval(
                f"SELECT live_schema FROM {POINTER_TABLE} WHERE name = $1", name)
        # No pointer yet: the configured schema is the live one (what `migrate` will record).
        return await _schemas(conn, name, live or name)
    finally:
        await conn.close()


async def drop_previous_schemas(settings: Settings, keep: int = 0, dry_run: bool = False, *,
                                only: Collection[str] | None = None) -> list[str]:
    """Drop (CASCADE) every schema of the configured read model that is not live, except the
    `keep` newest of them; returns their names, newest first (with `dry_run`, those it would
    drop, dropping nothing). With `only`, nothing outside it is dropped (what a user confirmed).

    Refused while a rebuild of this read model runs (its schema, not yet live, would look like a
    previous one), and while views outside the schemas to drop read them (CASCADE would drop
    those views too). The live schema is read and the schemas dropped while holding the pointer
    row, so a rebuild cannot switch in between."""
    if keep < 0:
        raise ValueError("keep must be >= 0")
    name = settings.read_model_schema
    conn = await asyncpg.connect(settings.dsn)
    try:
        await ensure_read_model_pointer(conn, name)
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT}'")
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock(hashtext($1))",
                                       _REBUILD_LOCK + name):
                raise DropRefused(f"a rebuild of {name} is running; try again once it is done")
            try:
                live = await lock_pointer(conn, name)
                previous = [i.name for i in await _schemas(conn, name, live) if not i.live]
                doomed = [s for s in previous[keep:] if only is None or s in only]
                if dependents := await _views_outside(conn, doomed):
                    raise DropRefused(
                        "views elsewhere read schemas it would drop (CASCADE would drop them "
                        f"too): {', '.join(dependents)}; drop or re-point them first, or keep "
                        "more")
                if not dry_run:
                    for schema in doomed:
                        await conn.execute(f'DROP SCHEMA "{checked_schema(schema)}" CASCADE')
                        log.info("dropped schema %s", schema)
            except asyncpg.LockNotAvailableError as e:
                raise DropRefused(
                    f"waited {DROP_LOCK_TIMEOUT} for a lock ({e}): a switch in progress or a "
                    "session still reading a previous schema; nothing was dropped") from None
        return doomed
    finally:
        await conn.close()
