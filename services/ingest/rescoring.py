"""Rescoring commands of ingest: remember the run items it published, turn `evaluate` into one
self-contained ScoreRequested per succeeded run item (through the outbox, all or nothing), and
record a person's verdict as a manual ScoreRecorded (docs/adr/0005)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from schemas.common import EvaluatorSpec, run_item_key, score_id, utcnow
from schemas.envelope import Envelope, wrap
from schemas.rescoring import ScoreRequestsIssued, issued_event_id, score_request_event_id
from schemas.scores import ScoreRecorded, ScoreRetracted
from schemas.traces import ScoreRequested, TraceCompleted
from services.http import FieldError
from services.ingest.catalog import OUTBOX_CHANNEL, SOURCE
from services.ingest.commands import RecordScore, RetractScore
from services.messaging import EventPublisher
from services.settings import Settings

# Score requests of one evaluate call go to the outbox in chunks of this many rows.
CHUNK = 1000


# The latest trace of every run item of the batch, as the projections decide "latest":
# completion time, then event id. Read from the bodies just published, as Postgres `json`.
RECORD_RUN_ITEMS = """
    INSERT INTO run_items AS r (run_item_id, run_id, dataset_id, dataset_item_id, trace_id,
        status, input, output, expected_output, completed_at, event_id)
    SELECT u.run_item_id, e.run_id, e.dataset_id, e.dataset_item_id, e.trace_id, e.status,
        e.input, e.output, e.expected_output, u.completed_at, u.event_id
    FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[]::json[])
        AS u(event_id, run_item_id, completed_at, doc)
    CROSS JOIN LATERAL json_to_record(u.doc) AS e(run_id text, dataset_id text,
        dataset_item_id text, trace_id text, status text, input jsonb, output jsonb,
        expected_output jsonb)
    ON CONFLICT (run_item_id) DO UPDATE SET trace_id = excluded.trace_id,
        status = excluded.status, input = excluded.input, output = excluded.output,
        expected_output = excluded.expected_output, completed_at = excluded.completed_at,
        event_id = excluded.event_id
    WHERE (r.completed_at, r.event_id) < (excluded.completed_at, excluded.event_id)
"""


def _latest_run_items(envelopes: Sequence[Envelope],
                      bodies: Sequence[bytes]) -> list[tuple[Envelope, bytes]]:
    """The latest trace of every run item of a run in the batch (completion time, then event
    id); traces outside runs have none. A trace's envelope is keyed by its run item id
    (`Catalog.complete_traces`), which is read from the key rather than derived again."""
    latest: dict[str | None, tuple[Envelope, bytes]] = {}
    for env, body in zip(envelopes, bodies, strict=True):
        t: TraceCompleted = env.event  # type: ignore[assignment]
        cur = latest.get(env.key)
        if t.run_id and (cur is None or (t.completed_at, env.id)
                         > (cur[0].event.completed_at, cur[0].id)):  # type: ignore[attr-defined]
            latest[env.key] = (env, body)
    return list(latest.values())


async def publish_traces(pool: asyncpg.Pool, publisher: EventPublisher,
                         envelopes: Sequence[Envelope]) -> None:
    """Publish traces (acks=all) and keep their run items in the catalog: one set-based
    statement, run while the broker acknowledges and committed only once it has, so a row never
    names a trace the broker does not have. Each body is encoded once, for both."""
    topic = publisher.settings.topics.traces
    bodies = [env.body() for env in envelopes]
    rows = _latest_run_items(envelopes, bodies)
    if not rows:
        await publisher.publish(topic, envelopes, bodies)
        return
    async with pool.acquire() as conn, conn.transaction():
        write = asyncio.create_task(conn.execute(
            RECORD_RUN_ITEMS, [env.id for env, _ in rows], [env.key for env, _ in rows],
            [env.event.completed_at for env, _ in rows],  # type: ignore[attr-defined]
            [body.decode() for _, body in rows]))
        try:
            await publisher.publish(topic, envelopes, bodies)
        finally:
            await write  # either way; a failed publish then rolls the write back


@dataclass(frozen=True, slots=True)
class EvaluateAccepted:
    request_id: str
    run_id: str
    requested: int
    evaluators: tuple[EvaluatorSpec, ...]


async def _append_outbox(conn: asyncpg.Connection, topic: str,
                         envelopes: Sequence[Envelope]) -> None:
    await conn.execute(
        """INSERT INTO outbox (topic, key, headers, body)
           SELECT $1, k, h::jsonb, b FROM unnest($2::text[], $3::text[], $4::bytea[]) AS x(k, h, b)
        """, topic, [e.key for e in envelopes],
        [json.dumps([[k, v.decode()] for k, v in e.headers()]) for e in envelopes],
        [e.body() for e in envelopes])


# The run items an evaluate request scores: $1 the run, $2 whether ids were given, $3 / $4 the
# dataset item and trace ids.
_CHOSEN = """run_id = $1 AND status = 'succeeded'
    AND (NOT $2 OR dataset_item_id = ANY($3::text[]) OR trace_id = ANY($4::text[]))"""


async def evaluate_run(pool: asyncpg.Pool, settings: Settings, run_id: str,
                       given: Sequence[EvaluatorSpec] | None, *,
                       dataset_item_ids: Sequence[str] | None = None,
                       trace_ids: Sequence[str] | None = None) -> EvaluateAccepted:
    """Request a rescoring of every succeeded run item of `run_id` (or, with `dataset_item_ids`
    or `trace_ids`, of those alone: an id without a succeeded run item in the run is a
    FieldError naming it), with `given` specs or the run's own. The header event and every
    request are written to the outbox in one transaction: the 202 means all of them will be
    published, or, on error, none."""
    request_id = str(uuid.uuid4())
    requested_at = utcnow()
    # One snapshot for the count and the rows, whatever traces arrive meanwhile.
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        run = await conn.fetchrow("SELECT evaluators, deleted_at FROM runs WHERE id = $1", run_id)
        if run is None:
            raise FieldError(("path", "run_id"), f"run {run_id} not found", 404, "not_found")
        if run["deleted_at"] is not None:
            raise FieldError(("path", "run_id"), f"run {run_id} was deleted", 404, "not_found")
        specs = tuple(given) if given else tuple(
            EvaluatorSpec.model_validate(s) for s in run["evaluators"])
        specs_json = [s.model_dump(mode="json", exclude_none=True) for s in specs]
        chosen = dataset_item_ids is not None or trace_ids is not None
        items, traces = list(dataset_item_ids or []), list(trace_ids or [])
        for field, ids, column in (("dataset_item_ids", items, "dataset_item_id"),
                                   ("trace_ids", traces, "trace_id")):
            unknown = await conn.fetchval(f"""
                SELECT min(n) FROM unnest($2::text[]) WITH ORDINALITY AS x(id, n)
                WHERE NOT EXISTS (SELECT 1 FROM run_items r WHERE r.run_id = $1
                                  AND r.status = 'succeeded' AND r.{column} = x.id)""",
                                          run_id, ids)
            if unknown is not None:
                raise FieldError((field, unknown - 1), f"{ids[unknown - 1]!r} has no succeeded "
                                                       f"trace in run {run_id}")
        # Counted first so that the header, written first, precedes its requests in the outbox.
        requested = await conn.fetchval(
            f"SELECT count(*) FROM run_items WHERE {_CHOSEN}", run_id, chosen, items, traces)
        header = ScoreRequestsIssued(
            request_id=request_id, origin="evaluate", run_id=run_id, requested=requested,
            runs={run_id: requested}, evaluators=specs, requested_at=requested_at)
        await conn.execute(
            "INSERT INTO score_requests (id, run_id, requested, evaluators, requested_at)"
            " VALUES ($1, $2, $3, $4, $5)", request_id, run_id, requested, specs_json,
            requested_at)
        await _append_outbox(conn, settings.topics.catalog, [wrap(
            header, source=SOURCE, key=run_id, time=requested_at,
            id=issued_event_id(request_id))])
        cursor = conn.cursor(
            f"""SELECT run_item_id, dataset_id, dataset_item_id, trace_id, input, output,
                       expected_output
                FROM run_items WHERE {_CHOSEN}
                ORDER BY run_item_id""", run_id, chosen, items, traces, prefetch=CHUNK)
        chunk: list[Envelope] = []
        async for row in cursor:
            event = ScoreRequested(
                run_id=run_id, dataset_id=row["dataset_id"],
                dataset_item_id=row["dataset_item_id"], trace_id=row["trace_id"],
                input=row["input"], output=row["output"],
                expected_output=row["expected_output"], evaluators=specs,
                request_id=request_id, requested_at=requested_at)
            chunk.append(wrap(event, source=SOURCE, key=row["run_item_id"], time=requested_at,
                              id=score_request_event_id(request_id, row["run_item_id"])))
            if len(chunk) >= CHUNK:
                await _append_outbox(conn, settings.topics.score_requests, chunk)
                chunk = []
        if chunk:
            await _append_outbox(conn, settings.topics.score_requests, chunk)
        await conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")
    return EvaluateAccepted(request_id, run_id, requested, specs)


async def manual_score(pool: asyncpg.Pool, cmd: RecordScore) -> Envelope:
    """Resolve the verdict's run item against the catalog and build its ScoreRecorded; raises
    FieldError naming the field when the run, item or trace is unknown."""
    return (await _manual_scores(pool, [cmd], in_batch=False))[0]


async def manual_scores(pool: asyncpg.Pool, cmds: Sequence[RecordScore]) -> list[Envelope]:
    """manual_score for several verdicts (`scores`), all or none: the first wrong one raises
    FieldError naming ("scores", its index, the field)."""
    return await _manual_scores(pool, cmds, in_batch=True)


async def _manual_scores(pool: asyncpg.Pool, cmds: Sequence[RecordScore],
                         in_batch: bool) -> list[Envelope]:
    return [_verdict(cmd, item) for cmd, item in zip(
        cmds, await _run_items_of(pool, cmds, in_batch), strict=True)]


async def retract_score(pool: asyncpg.Pool, cmd: RetractScore) -> Envelope:
    """Resolve the verdict's run item as manual_score does and build its ScoreRetracted."""
    item = (await _run_items_of(pool, [cmd], in_batch=False))[0]
    now = utcnow()
    event = ScoreRetracted(
        score_id=score_id(item["run_item_id"], cmd.name, "manual"),
        run_item_id=item["run_item_id"], run_id=cmd.run_id,
        dataset_item_id=item["dataset_item_id"], trace_id=item["trace_id"], name=cmd.name,
        retracted_by=cmd.retracted_by, reason=cmd.reason, retracted_at=now)
    return wrap(event, source=SOURCE, key=event.run_item_id, time=now)


async def _run_items_of(pool: asyncpg.Pool, cmds: Sequence[RecordScore | RetractScore],
                        in_batch: bool) -> list[asyncpg.Record | dict]:
    """The run item each verdict (or retraction) names. Three statements whatever their number:
    their runs, the run items named by dataset item, and those named by trace (each trace's
    latest run item of its run). Then each is checked in order, and the first wrong one raises
    FieldError naming the field at fault (under ("scores", its index) `in_batch`)."""
    in_runs = [c for c in cmds if c.run_id is not None]
    by_item = {n: run_item_key(c.run_id, c.dataset_item_id, None)
               for n, c in enumerate(cmds) if c.run_id and c.dataset_item_id is not None}
    by_trace = [n for n, c in enumerate(cmds)
                if c.run_id and c.dataset_item_id is None and c.trace_id]
    async with pool.acquire() as conn:
        runs = {r["id"]: r["deleted_at"] for r in await conn.fetch(
            "SELECT id, deleted_at FROM runs WHERE id = ANY($1::text[])",
            list({c.run_id for c in in_runs}))}
        items = {r["run_item_id"]: r for r in await conn.fetch(
            "SELECT run_item_id, dataset_item_id, trace_id FROM run_items"
            " WHERE run_item_id = ANY($1::text[])", list(set(by_item.values())))}
        traces = {(r["run_id"], r["trace_id"]): r for r in await conn.fetch(
            "SELECT DISTINCT ON (i.run_id, i.trace_id) i.run_id, i.run_item_id,"
            "       i.dataset_item_id, i.trace_id"
            " FROM unnest($1::text[], $2::text[]) AS w(run_id, trace_id)"
            " JOIN run_items i ON i.run_id = w.run_id AND i.trace_id = w.trace_id"
            " ORDER BY i.run_id, i.trace_id, i.completed_at DESC",
            [cmds[n].run_id for n in by_trace], [cmds[n].trace_id for n in by_trace])}
    found = []
    for n, cmd in enumerate(cmds):
        where: tuple[str | int, ...] = ("scores", n) if in_batch else ()
        if cmd.run_id is None:
            # A trace outside runs (production traffic): its run item follows from its id.
            # Ingest keeps no such traces, so the verdict is taken as given; the read models
            # show it with the trace, whichever of the two arrives first.
            if cmd.trace_id is None or cmd.dataset_item_id is not None:
                raise FieldError((*where, "trace_id"), "a trace outside runs is named by its "
                                 "`trace_id` alone; a run's item needs its `run_id`")
            found.append({"run_item_id": run_item_key(None, None, cmd.trace_id),
                          "dataset_item_id": None, "trace_id": cmd.trace_id})
            continue
        if cmd.dataset_item_id is None and cmd.trace_id is None:
            raise FieldError((*where, "dataset_item_id"), "give `dataset_item_id` or `trace_id`")
        if cmd.run_id not in runs:
            raise FieldError((*where, "run_id"), f"unknown run {cmd.run_id!r}")
        if runs[cmd.run_id] is not None:
            raise FieldError((*where, "run_id"), f"run {cmd.run_id!r} was deleted")
        if cmd.dataset_item_id is not None:
            item = items.get(by_item[n])
            if item is None:
                raise FieldError((*where, "dataset_item_id"),
                                 f"run {cmd.run_id} has no trace of dataset item "
                                 f"{cmd.dataset_item_id!r}")
            if cmd.trace_id is not None and cmd.trace_id != item["trace_id"]:
                raise FieldError((*where, "trace_id"),
                                 f"trace {cmd.trace_id!r} is not the trace of item "
                                 f"{cmd.dataset_item_id!r} in this run")
        else:
            item = traces.get((cmd.run_id, cmd.trace_id))
            if item is None:
                raise FieldError((*where, "trace_id"),
                                 f"run {cmd.run_id} has no trace {cmd.trace_id!r}")
        found.append(item)
    return found


def _verdict(cmd: RecordScore, item: asyncpg.Record | dict) -> Envelope:
    value, label = cmd.scored()
    now = utcnow()
    # Source `manual` is part of the score id: a verdict replaces the previous verdict of the
    # same name, never the programmatic score of that name.
    event = ScoreRecorded(
        score_id=score_id(item["run_item_id"], cmd.name, "manual"),
        run_item_id=item["run_item_id"], run_id=cmd.run_id,
        dataset_item_id=item["dataset_item_id"], trace_id=item["trace_id"], name=cmd.name,
        value=value, data_type=cmd.data_type, string_value=label, source="manual",
        comment=cmd.comment, created_by=cmd.created_by, observed_at=now)
    return wrap(event, source=SOURCE, key=event.run_item_id, time=now)
