"""Applies a batch of events to the Postgres read models in one transaction.

The outcome does not depend on arrival order or repetition, which is what lets a rebuild from the
log come out identical to the live models:
- every event id is recorded in `applied_events` (or, for scores, as the current value or in
  `score_history`) in the same transaction; a seen id is skipped;
- "latest wins" compares the event's own time (then its id), never the order of arrival;
- a deleted run's rows go when its RunDeleted is applied, and every statement that writes rows
  of a run skips the runs in `deleted_runs`, so its events arriving later leave nothing (the
  same for a dataset and `deleted_datasets`).
Each event type has one handler, and each handler is one set-based statement per batch.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

import asyncpg

from schemas.catalog import (
    DatasetBaselineSet,
    DatasetCreated,
    DatasetDeleted,
    DatasetItemsDeleted,
    DatasetItemsUpserted,
    EvaluatorsConfigured,
    RunDeleted,
    RunStarted,
    ScoringRuleDeleted,
    ScoringRuleSet,
)
from schemas.common import Event
from schemas.envelope import Envelope
from schemas.rescoring import ScoreRequestsIssued, ScoringCompleted
from schemas.scores import CaseScored, EvaluationFailed, ScoreRecorded, ScoreRetracted
from schemas.traces import ScoreRequested, TraceCompleted

Rows = list[dict]

# Retention of the traces outside runs (docs/adr/0017): a row about production traffic is
# written only if its own time is at or after this watermark, which a sweep raises
# (services/projections/retention.py), deleting the rows before it.
RETAINED = "SELECT outside_runs_before FROM retention"
# score_history has no run id: its rows about production traffic are marked (true, else NULL).
OUTSIDE_RUNS = "({row}.run_id IS NULL OR NULL)"

log = logging.getLogger(__name__)


def _dump(event: Event, **extra) -> dict:
    # Absent keys read as NULL in jsonb_to_recordset; leaving None out keeps `"name": null`
    # out of the evaluator specs stored as jsonb.
    return {**event.model_dump(mode="json", exclude_none=True), **extra}


async def _on_bodies(conn: asyncpg.Connection, sql: str, batch: Sequence[Envelope],
                     *columns: list) -> None:
    """Run `sql` with $1 = the events' ids, then `columns` (one value per event, computed here),
    then the events' JSON bodies as text, which the statement unpacks with json_to_record
    (as `json`, not `jsonb`: a body read once needs no binary form, and that is ~40% cheaper).

    The bodies go to Postgres as they were consumed: encoding the validated events to JSON again
    was most of the projections' Python time. Pydantic reads a few things more leniently than
    Postgres (a number of seconds as a timestamp, 12.0 as an integer); such a body fails the
    statement, which then runs on the bodies encoded from the validated events. The events'
    times, on which "latest wins" turns, are always passed from the validated events."""
    ids = [e.id for e in batch]
    if any(e.raw is not None for e in batch):
        try:
            async with conn.transaction():  # a savepoint: a failed statement must not end the batch
                await conn.execute(sql, ids, *columns,
                                   [(e.raw or e.body()).decode() for e in batch])
                return
        except (asyncpg.DataError, UnicodeDecodeError) as e:
            log.info("a body Postgres reads otherwise than pydantic (%s); re-encoding the batch", e)
    await conn.execute(sql, ids, *columns, [e.body().decode() for e in batch])


async def apply_dataset_created(conn: asyncpg.Connection, batch: Sequence[Envelope]) -> None:
    await conn.execute("""
        INSERT INTO datasets (id, name, description, evaluators, created_at, evaluators_at)
        SELECT dataset_id, name, description, evaluators, created_at, created_at
        FROM jsonb_to_recordset($1::jsonb) AS e(dataset_id text, name text, description text,
                                                 evaluators jsonb, created_at timestamptz)
        WHERE NOT EXISTS (SELECT 1 FROM deleted_datasets x WHERE x.dataset_id = e.dataset_id)
        ON CONFLICT (id) DO UPDATE SET name = excluded.name, description = excluded.description,
            created_at = excluded.created_at,
            evaluators = CASE WHEN excluded.evaluators_at > datasets.evaluators_at
                              THEN excluded.evaluators ELSE datasets.evaluators END,
            evaluators_at = greatest(excluded.evaluators_at, datasets.evaluators_at)
        """, [_dump(e.event) for e in batch])


async def apply_evaluators_configured(conn: asyncpg.Connection,
                                      batch: Sequence[Envelope]) -> None:
    latest: dict[str, EvaluatorsConfigured] = {}
    for env in batch:
        ev: EvaluatorsConfigured = env.event  # type: ignore[assignment]
        if ev.dataset_id not in latest or ev.configured_at > latest[ev.dataset_id].configured_at:
            latest[ev.dataset_id] = ev
    # A configuration that arrives before its DatasetCreated is kept on a placeholder row,
    # which DatasetCreated then completes.
    await conn.execute("""
        INSERT INTO datasets (id, name, evaluators, created_at, evaluators_at)
        SELECT dataset_id, '', evaluators, configured_at, configured_at
        FROM jsonb_to_recordset($1::jsonb) AS e(dataset_id text, evaluators jsonb,
                                                 configured_at timestamptz)
        WHERE NOT EXISTS (SELECT 1 FROM deleted_datasets x WHERE x.dataset_id = e.dataset_id)
        ON CONFLICT (id) DO UPDATE SET evaluators = excluded.evaluators,
            evaluators_at = excluded.evaluators_at
        WHERE datasets.evaluators_at < excluded.evaluators_at
        """, [_dump(e) for e in latest.values()])


async def apply_baselines(conn: asyncpg.Connection, batch: Sequence[Envelope]) -> None:
    """The latest choice of each dataset's baseline run stands. Like a configuration, one that
    arrives before its DatasetCreated waits on a placeholder row (its evaluators older than any
    real ones), which DatasetCreated completes."""
    latest = _latest(batch, lambda e: e.dataset_id, lambda e: e.set_at)
    await conn.execute("""
        INSERT INTO datasets AS d (id, name, evaluators, created_at, evaluators_at,
            baseline_run_id, baseline_set_at)
        SELECT dataset_id, '', '[]', set_at, '-infinity', run_id, set_at
        FROM jsonb_to_recordset($1::jsonb) AS e(dataset_id text, run_id text,
                                                 set_at timestamptz)
        WHERE NOT EXISTS (SELECT 1 FROM deleted_datasets x WHERE x.dataset_id = e.dataset_id)
        ON CONFLICT (id) DO UPDATE SET baseline_run_id = excluded.baseline_run_id,
            baseline_set_at = excluded.baseline_set_at
        WHERE d.baseline_set_at IS NULL OR d.baseline_set_at < excluded.baseline_set_at
        """, [_dump(e.event) for e in latest])


async def apply_items_upserted(conn: asyncpg.Connection, batch: Sequence[Envelope]) -> None:
    """Each item's latest content, and every time it was upserted (`dataset_item_upserts`: when
    it joined the dataset is the earliest of them, see views.run_scoring)."""
    latest: dict[tuple[str, str], dict] = {}
    times: set[tuple[str, str, datetime]] = set()
    for env in batch:
        ev: DatasetItemsUpserted = env.event  # type: ignore[assignment]
        at = ev.upserted_at.isoformat()
        for item in ev.items:
            row = {**item.model_dump(mode="json"), "dataset_id": ev.dataset_id,
                   "updated_at": at}
            key = (ev.dataset_id, item.id)
            times.add((*key, ev.upserted_at))
            if key not in latest or row["updated_at"] > latest[key]["updated_at"]:
                latest[key] = row
    if not times:
        return
    await conn.execute("""
        INSERT INTO dataset_item_upserts (dataset_id, item_id, upserted_at)
        SELECT e.dataset_id, e.item_id, e.upserted_at
        FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS e(dataset_id, item_id,
                                                                    upserted_at)
        WHERE NOT EXISTS (SELECT 1 FROM deleted_datasets x WHERE x.dataset_id = e.dataset_id)
          AND NOT EXISTS (SELECT 1 FROM deleted_dataset_items r
                          WHERE (r.dataset_id, r.item_id) = (e.dataset_id, e.item_id)
                            AND r.deleted_at >= e.upserted_at)
        ON CONFLICT DO NOTHING
        """, *(list(column) for column in zip(*times, strict=True)))
    await conn.execute("""
        INSERT INTO dataset_items (id, dataset_id, input, expected_output, metadata, updated_at)
        SELECT id, dataset_id, input, expected_output, metadata, updated_at
        FROM jsonb_to_recordset($1::jsonb) AS e(id text, dataset_id text, input jsonb,
                                                 expected_output jsonb, metadata jsonb,
                                                 updated_at timestamptz)
        WHERE NOT EXISTS (SELECT 1 FROM deleted_datasets x WHERE x.dataset_id = e.dataset_id)
          -- removed at or after this upsert: the removal stands
          AND NOT EXISTS (SELECT 1 FROM deleted_dataset_items r
                          WHERE (r.dataset_id, r.item_id) = (e.dataset_id, e.id)
                            AND r.deleted_at >= e.updated_at)
        ON CONFLICT (dataset_id, id) DO UPDATE SET input = excluded.input,
            expected_output = excluded.expected_output, metadata = excluded.metadata,
            updated_at = excluded.updated_at
        WHERE dataset_items.updated_at < excluded.updated_at
        """, list(latest.values()))


async def apply_items_deleted(conn: asyncpg.Connection, batch: Sequence[Envelope]) -> None:
    """Remember each item's latest removal, then remove the items not upserted since, and the
    times of the upserts before it; an upsert older than the removal arriving later is skipped
    (apply_items_upserted)."""
    await conn.execute("""
        WITH removals AS (
            INSERT INTO deleted_dataset_items AS r (dataset_id, item_id, deleted_at)
            SELECT dataset_id, item_id, max(deleted_at)
            FROM jsonb_to_recordset($1::jsonb) AS e(dataset_id text, item_ids text[],
                                                     deleted_at timestamptz),
                 unnest(e.item_ids) AS item_id
            WHERE NOT EXISTS (SELECT 1 FROM deleted_datasets x WHERE x.dataset_id = e.dataset_id)
            GROUP BY dataset_id, item_id
            ON CONFLICT (dataset_id, item_id) DO UPDATE SET deleted_at = excluded.deleted_at
            WHERE r.deleted_at < excluded.deleted_at
            RETURNING dataset_id, item_id, deleted_at)
        , pruned AS (
            DELETE FROM dataset_item_upserts u USING removals r
            WHERE (u.dataset_id, u.item_id) = (r.dataset_id, r.item_id)
              AND u.upserted_at <= r.deleted_at)
        DELETE FROM dataset_items i USING removals r
        WHERE (i.dataset_id, i.id) = (r.dataset_id, r.item_id) AND i.updated_at <= r.deleted_at
        """, [_dump(e.event) for e in batch])


async def apply_run_started(conn: asyncpg.Connection, batch: Sequence[Envelope]) -> None:
    await conn.execute("""
        INSERT INTO runs (id, dataset_id, name, evaluators, metadata, total_items, started_at)
        SELECT run_id, dataset_id, name, evaluators, metadata, total_items, started_at
        FROM jsonb_to_recordset($1::jsonb) AS e(run_id text, dataset_id text, name text,
                                                 evaluators jsonb, metadata jsonb,
                                                 total_items integer, started_at timestamptz)
        WHERE NOT EXISTS (SELECT 1 FROM deleted_runs d WHERE d.run_id = e.run_id)
          AND NOT EXISTS (SELECT 1 FROM deleted_datasets x WHERE x.dataset_id = e.dataset_id)
        ON CONFLICT (id) DO NOTHING
        """, [_dump(e.event) for e in batch])


def _latest(batch: Sequence[Envelope], key: Callable[[Event], str],
            at: Callable[[Event], object]) -> list[Envelope]:
    """Within one batch, keep the latest event per key (one statement may touch a row once)."""
    best: dict[str, Envelope] = {}
    for env in batch:
        k = key(env.event)
        cur = best.get(k)
        if cur is None or (at(env.event), env.id) > (at(cur.event), cur.id):
            best[k] = env
    return list(best.values())


async def apply_traces(conn: asyncpg.Connection, batch: Sequence[Envelope]) -> None:
    latest = _latest(batch, lambda e: e.run_item_id, lambda e: e.completed_at)
    # A present `usage` has both counts: pydantic fills a missing one with 0.
    await _on_bodies(conn, f"""
        INSERT INTO run_items AS r (run_item_id, run_id, dataset_item_id, trace_id, status, input,
            output, expected_output, error, latency_ms, input_tokens, output_tokens, cost,
            metadata, completed_at, event_id)
        SELECT u.run_item_id, e.run_id, e.dataset_item_id, e.trace_id, e.status, e.input,
            e.output, e.expected_output, e.error, e.latency_ms,
            CASE WHEN json_typeof(e.usage) = 'object'
                 THEN coalesce((e.usage->>'input_tokens')::integer, 0) END,
            CASE WHEN json_typeof(e.usage) = 'object'
                 THEN coalesce((e.usage->>'output_tokens')::integer, 0) END,
            e.cost, e.metadata, u.completed_at, u.event_id
        FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[]::json[])
            AS u(event_id, run_item_id, completed_at, doc)
        CROSS JOIN LATERAL json_to_record(u.doc) AS e(run_id text, dataset_item_id text,
            trace_id text, status text, input jsonb, output jsonb, expected_output jsonb,
            error text, latency_ms double precision, usage json, cost double precision,
            metadata jsonb)
        WHERE NOT EXISTS (SELECT 1 FROM deleted_runs d WHERE d.run_id = e.run_id)
          AND (e.run_id IS NOT NULL OR u.completed_at >= ({RETAINED}))
        ON CONFLICT (run_item_id) DO UPDATE SET run_id = excluded.run_id,
            dataset_item_id = excluded.dataset_item_id, trace_id = excluded.trace_id,
            status = excluded.status, input = excluded.input, output = excluded.output,
            expected_output = excluded.expected_output, error = excluded.error,
            latency_ms = excluded.latency_ms, input_tokens = excluded.input_tokens,
            output_tokens = excluded.output_tokens, cost = excluded.cost,
            metadata = excluded.metadata, completed_at = excluded.completed_at,
            event_id = excluded.event_id
        WHERE (r.completed_at, r.event_id) < (excluded.completed_at, excluded.event_id)
        """, latest, [e.event.run_item_id for e in latest],  # type: ignore[attr-defined]
        [e.event.completed_at for e in latest])  # type: ignore[attr-defined]


# A ScoreRecorded body's columns; observed_at and the event id come from the validated event.
_SCORE_RECORD = """score_id text, run_item_id text, run_id text, dataset_item_id text,
    trace_id text, name text, source text, value double precision, data_type text,
    string_value text, comment text, created_by text, evaluator text, evaluator_version text,
    spec_hash text, request_id text, pass_threshold double precision, input_tokens integer,
    output_tokens integer"""
# What _on_bodies passes: event ids, event times, bodies.
_BODIES = """unnest($1::text[], $2::timestamptz[], $3::text[]::json[])
    AS u(event_id, observed_at, doc)"""
# The score rows of a batch of ScoreRecorded events ...
_RECORDED_SCORES = f"""SELECT e.*, u.observed_at, u.event_id FROM {_BODIES}
    CROSS JOIN LATERAL json_to_record(u.doc) AS e({_SCORE_RECORD})"""
# ... and of a batch of CaseScored events: the case's fields on each of its scores. A score inside
# a CaseScored is ledgered under "<event id>/<score id>" (scores.event_id, score_history.event_id),
# unique per score as a ScoreRecorded's own id was.
_CASE = """run_item_id text, run_id text, dataset_item_id text, trace_id text, request_id text,
    scores json, failures json"""
_CASE_SCORES = f"""SELECT s.score_id, c.run_item_id, c.run_id, c.dataset_item_id, c.trace_id,
        s.name, s.source, s.value, s.data_type, s.string_value, s.comment, NULL::text AS created_by,
        s.evaluator, s.evaluator_version, s.spec_hash, c.request_id, s.pass_threshold,
        s.input_tokens, s.output_tokens,
        u.observed_at, u.event_id || '/' || s.score_id AS event_id
    FROM {_BODIES} CROSS JOIN LATERAL json_to_record(u.doc) AS c({_CASE})
    CROSS JOIN LATERAL json_to_recordset(c.scores) AS s(score_id text, name text, source text,
        value double precision, data_type text, string_value text, comment text, evaluator text,
        evaluator_version text, spec_hash text, pass_threshold double precision,
        input_tokens integer, output_tokens integer)"""
# The same two ways for failures.
_RECORDED_FAILURES = f"""SELECT e.*, u.observed_at, u.event_id FROM {_BODIES}
    CROSS JOIN LATERAL json_to_record(u.doc) AS e(failure_id text, run_item_id text, run_id text,
        dataset_item_id text, trace_id text, name text, evaluator text, evaluator_version text,
        spec_hash text, reason text, request_id text)"""
_CASE_FAILURES = f"""SELECT f.failure_id, c.run_item_id, c.run_id, c.dataset_item_id, c.trace_id,
        f.name, f.evaluator, f.evaluator_version, f.spec_hash, f.reason, c.request_id,
        u.observed_at, u.event_id || '/' || f.failure_id AS event_id
    FROM {_BODIES} CROSS JOIN LATERAL json_to_record(u.doc) AS c({_CASE})
    CROSS JOIN LATERAL json_to_recordset(c.failures) AS f(failure_id text, name text,
        evaluator text, evaluator_version text, spec_hash text, reason text)"""


def _observed_at(batch: Sequence[Envelope]) -> list:
    return [e.event.observed_at for e in batch]  # type: ignore[attr-defined]


def _upsert_scores(rows: str) -> str:
    """The statement that applies the score rows `rows` selects (one per score, with its ledger
    id as `event_id`).

    Every score applied is either its score's current value (`scores.event_id`) or an earlier one
    (`score_history`), never both: so those two tables are the scores' ledger (no applied_events
    row), and the first value of a score costs one row, not two. A row whose id the history holds
    is skipped. Of the others, the latest per score (by its time, then id) goes to the upsert,
    which replaces only an older value with another event's; the value it displaces, and every
    row that did not win, go to the history — except the current value itself, redelivered (a
    trace posted again yields its scores' ids again, with a later time)."""
    return f"""
        WITH e AS ({rows}),
        fresh AS (SELECT * FROM e
                  WHERE (SELECT true FROM score_history h WHERE h.event_id = e.event_id) IS NULL
                    AND (SELECT true FROM deleted_runs d WHERE d.run_id = e.run_id) IS NULL
                    AND (e.run_id IS NOT NULL OR e.observed_at >= ({RETAINED}))),
        latest AS (
            -- A verdict taken back at or after its time is history only (apply_retractions).
            SELECT DISTINCT ON (run_item_id, name, source) * FROM fresh
            WHERE source <> 'manual' OR (
                SELECT true FROM retracted_scores t WHERE (t.run_item_id, t.name)
                    = (fresh.run_item_id, fresh.name) AND t.retracted_at >= fresh.observed_at)
                IS NULL
            ORDER BY run_item_id, name, source, observed_at DESC, event_id DESC),
        upserted AS (
            INSERT INTO scores AS s (score_id, run_item_id, run_id, dataset_item_id, trace_id,
                name, source, value, data_type, string_value, comment, created_by, evaluator,
                evaluator_version, spec_hash, request_id, pass_threshold, input_tokens,
                output_tokens, observed_at, event_id)
            SELECT score_id, run_item_id, run_id, dataset_item_id, trace_id, name, source, value,
                data_type, string_value, comment, created_by, evaluator, evaluator_version,
                spec_hash, request_id, pass_threshold, input_tokens, output_tokens, observed_at,
                event_id FROM latest
            ON CONFLICT (run_item_id, name, source) DO UPDATE SET value = excluded.value,
                data_type = excluded.data_type, string_value = excluded.string_value,
                comment = excluded.comment, created_by = excluded.created_by,
                evaluator = excluded.evaluator, evaluator_version = excluded.evaluator_version,
                spec_hash = excluded.spec_hash, request_id = excluded.request_id,
                pass_threshold = excluded.pass_threshold, input_tokens = excluded.input_tokens,
                output_tokens = excluded.output_tokens,
                observed_at = excluded.observed_at, event_id = excluded.event_id,
                trace_id = excluded.trace_id
            WHERE (s.observed_at, s.event_id) < (excluded.observed_at, excluded.event_id)
              AND s.event_id <> excluded.event_id
            RETURNING run_item_id, name, source, event_id, observed_at, xmax <> 0 AS displaced),
        earlier AS (
            INSERT INTO score_history (event_id, score_id, value, string_value, comment,
                created_by, evaluator, evaluator_version, spec_hash, request_id, observed_at,
                outside_runs)
            -- Reads of `scores` here see the statement's snapshot: the values before the upsert.
            -- They are LATERAL ... OFFSET 0 and scalar subqueries, which Postgres runs as one
            -- index probe per row (as IN / EXISTS it may plan a hash join over the whole table:
            -- a CaseScored's json_to_recordset is estimated at 100 rows a case).
            SELECT p.event_id, p.score_id, p.value, p.string_value, p.comment, p.created_by,
                p.evaluator, p.evaluator_version, p.spec_hash, p.request_id, p.observed_at,
                {OUTSIDE_RUNS.format(row="p")}
            FROM upserted d CROSS JOIN LATERAL (
                SELECT * FROM scores p
                WHERE (p.run_item_id, p.name, p.source) = (d.run_item_id, d.name, d.source)
                OFFSET 0) p
            WHERE d.displaced
            UNION ALL
            SELECT f.event_id, f.score_id, f.value, f.string_value, f.comment, f.created_by,
                f.evaluator, f.evaluator_version, f.spec_hash, f.request_id, f.observed_at,
                {OUTSIDE_RUNS.format(row="f")}
            FROM fresh f
            WHERE f.event_id NOT IN (SELECT event_id FROM upserted)
              AND f.event_id IS DISTINCT FROM (
                    SELECT s.event_id FROM scores s
                    WHERE (s.run_item_id, s.name, s.source) = (f.run_item_id, f.name, f.source))
            ON CONFLICT (event_id) DO NOTHING)
        -- A score that becomes current and is newer than a recorded failure of the same
        -- evaluator supersedes it (a score that does not become current is older than one that
        -- did, which already had); a person's verdict of the same name is another score and
        -- leaves the failure standing.
        DELETE FROM evaluation_failures f USING upserted e
        WHERE f.run_item_id = e.run_item_id AND f.name = e.name AND e.source <> 'manual'
          AND f.observed_at <= e.observed_at
        """


def _upsert_failures(rows: str) -> str:
    """The statement that records the failures `rows` selects, unless a newer score of the same
    evaluator superseded them; a repeat is a no-op (the upsert is guarded by time, then id)."""
    return f"""
        INSERT INTO evaluation_failures AS f (failure_id, run_item_id, run_id, dataset_item_id,
            trace_id, name, evaluator, evaluator_version, spec_hash, reason, request_id,
            observed_at, event_id)
        SELECT DISTINCT ON (e.failure_id) e.failure_id, e.run_item_id, e.run_id,
            e.dataset_item_id, e.trace_id, e.name, e.evaluator, e.evaluator_version, e.spec_hash,
            e.reason, e.request_id, e.observed_at, e.event_id
        FROM ({rows}) AS e
        WHERE NOT EXISTS (SELECT 1 FROM scores s WHERE s.run_item_id = e.run_item_id
                          AND s.name = e.name AND s.source <> 'manual'
                          AND s.observed_at >= e.observed_at)
          AND NOT EXISTS (SELECT 1 FROM deleted_runs d WHERE d.run_id = e.run_id)
          AND (e.run_id IS NOT NULL OR e.observed_at >= ({RETAINED}))
        ORDER BY e.failure_id, e.observed_at DESC, e.event_id DESC
        ON CONFLICT (failure_id) DO UPDATE SET reason = excluded.reason,
            evaluator_version = excluded.evaluator_version, spec_hash = excluded.spec_hash,
            request_id = excluded.request_id, observed_at = excluded.observed_at,
            event_id = excluded.event_id
        WHERE (f.observed_at, f.event_id) < (excluded.observed_at, excluded.event_id)
        """


_APPLY_RECORDED_SCORES = _upsert_scores(_RECORDED_SCORES)
_APPLY_RECORDED_FAILURES = _upsert_failures(_RECORDED_FAILURES)
_APPLY_CASE_SCORES = _upsert_scores(_CASE_SCORES)
_APPLY_CASE_FAILURES = _upsert_failures(_CASE_FAILURES)


async def _record_scoreless(conn: asyncpg.Connection, reports: Sequence[Event]) -> None:
    """Remember the evaluator's reports on run items of a run that left no score (nothing to
    compare with, or every evaluator failed), the latest time per run item whatever the order:
    a report's scores carry its time, and with these rows a run's scoring progress
    (views.run_scoring) tells the succeeded items whose latest trace has had no report yet."""
    reports = [r for r in reports if r.run_id is not None]  # type: ignore[attr-defined]
    if not reports:
        return
    await conn.execute("""
        INSERT INTO scoreless_cases AS c (run_id, run_item_id, observed_at)
        SELECT run_id, run_item_id, max(observed_at)
        FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS e(run_id, run_item_id,
                                                                     observed_at)
        WHERE NOT EXISTS (SELECT 1 FROM deleted_runs d WHERE d.run_id = e.run_id)
        GROUP BY run_id, run_item_id
        ON CONFLICT (run_id, run_item_id) DO UPDATE SET observed_at = excluded.observed_at
        WHERE c.observed_at < excluded.observed_at
        """, [r.run_id for r in reports], [r.run_item_id for r in reports],  # type: ignore
        [r.observed_at for r in reports])  # type: ignore[attr-defined]


async def apply_scores(conn: asyncpg.Connection, batch: Sequence[Envelope]) -> None:
    await _on_bodies(conn, _APPLY_RECORDED_SCORES, batch, _observed_at(batch))


async def apply_failures(conn: asyncpg.Connection, batch: Sequence[Envelope]) -> None:
    await _on_bodies(conn, _APPLY_RECORDED_FAILURES, batch, _observed_at(batch))
    # A log written before docs/adr/0008: an evaluator's failure was an event of its own.
    await _record_scoreless(conn, [e.event for e in batch])


# Progress of a score request, one row per (request, run item): from the ScoringCompleted events of
# earlier versions, or from the CaseScored events that carry a request id.
_UPSERT_REQUEST_CASES = """
        INSERT INTO score_request_cases AS c (request_id, run_item_id, run_id, trace_id, scored,
            failed, observed_at, event_id)
        SELECT DISTINCT ON (e.request_id, e.run_item_id) e.request_id, e.run_item_id, e.run_id,
            e.trace_id, e.scored, e.failed, e.observed_at, e.event_id
        FROM ({rows}) AS e
        WHERE e.request_id IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM deleted_runs d WHERE d.run_id = e.run_id)
        ORDER BY e.request_id, e.run_item_id, e.observed_at DESC, e.event_id DESC
        ON CONFLICT (request_id, run_item_id) DO UPDATE SET run_id = excluded.run_id,
            trace_id = excluded.trace_id, scored = excluded.scored, failed = excluded.failed,
            observed_at = excluded.observed_at, event_id = excluded.event_id
        WHERE (c.observed_at, c.event_id) < (excluded.observed_at, excluded.event_id)
        """
_APPLY_SCORING_COMPLETED = _UPSERT_REQUEST_CASES.format(rows=f"""
    SELECT e.*, u.observed_at, u.event_id FROM {_BODIES}
    CROSS JOIN LATERAL json_to_record(u.doc) AS e(request_id text, run_item_id text,
        run_id text, trace_id text, scored integer, failed integer)""")
_APPLY_CASE_COMPLETIONS = _UPSERT_REQUEST_CASES.format(rows=f"""
    SELECT c.request_id, c.run_item_id, c.run_id, c.trace_id,
        json_array_length(c.scores) AS scored, coalesce(json_array_length(c.failures), 0) AS failed,
        u.observed_at, u.event_id
    FROM {_BODIES} CROSS JOIN LATERAL json_to_record(u.doc) AS c({_CASE})""")


async def apply_case_scored(conn: asyncpg.Connection, batch: Sequence[Envelope]) -> None:
    """A case's scores as ScoreRecorded events would be applied (or, with none, the case as one
    without a score), then its failures, then (for a score request) its completion: four
    set-based statements per batch at most, whatever it holds."""
    observed_at = _observed_at(batch)
    await _on_bodies(conn, _APPLY_CASE_SCORES, batch, observed_at)
    await _record_scoreless(conn, [e.event for e in batch
                                   if not e.event.scores])  # type: ignore[attr-defined]
    if any(e.event.failures for e in batch):  # type: ignore[attr-defined]
        await _on_bodies(conn, _APPLY_CASE_FAILURES, batch, observed_at)
    if any(e.event.request_id is not None for e in batch):  # type: ignore[attr-defined]
        await _on_bodies(conn, _APPLY_CASE_COMPLETIONS, batch, observed_at)


async def apply_score_requests_issued(conn: asyncpg.Connection,
                                      batch: Sequence[Envelope]) -> None:
    rows = [_dump(e.event, event_id=e.id) for e in
            _latest(batch, lambda e: e.request_id, lambda e: e.requested_at)]
    await conn.execute("""
        INSERT INTO score_requests AS q (request_id, origin, run_id, requested, runs, evaluators,
            filters, interrupted, requested_at, event_id)
        SELECT * FROM jsonb_to_recordset($1::jsonb) AS e(request_id text, origin text,
            run_id text, requested integer, runs jsonb, evaluators jsonb, filters jsonb,
            interrupted boolean, requested_at timestamptz, event_id text)
        -- Of a deleted run too, whatever the order: its progress shows the cases withdrawn.
        ON CONFLICT (request_id) DO UPDATE SET origin = excluded.origin, run_id = excluded.run_id,
            requested = excluded.requested, runs = excluded.runs,
            evaluators = excluded.evaluators, filters = excluded.filters,
            interrupted = excluded.interrupted, requested_at = excluded.requested_at,
            event_id = excluded.event_id
        WHERE (q.requested_at, q.event_id) < (excluded.requested_at, excluded.event_id)
        """, rows)


async def apply_scoring_completed(conn: asyncpg.Connection, batch: Sequence[Envelope]) -> None:
    await _on_bodies(conn, _APPLY_SCORING_COMPLETED, batch, _observed_at(batch))


async def _tombstones(conn: asyncpg.Connection, table: str, key: str,
                      batch: Sequence[Envelope]) -> list[str] | None:
    """Record the deletions of a batch in `table` (deleted_runs or deleted_datasets, keyed by
    `key`); returns the ids whose rows are to go. Two deletions of one id (not something ingest
    publishes) keep the earliest, whatever the order."""
    return await conn.fetchval(f"""
        WITH tombstones AS (
            INSERT INTO {table} ({key}, deleted_at, event_id)
            SELECT {key}, deleted_at, event_id FROM jsonb_to_recordset($1::jsonb)
                AS e({key} text, deleted_at timestamptz, event_id text)
            ON CONFLICT ({key}) DO UPDATE SET deleted_at = excluded.deleted_at,
                event_id = excluded.event_id
            WHERE (excluded.deleted_at, excluded.event_id)
                < ({table}.deleted_at, {table}.event_id)
            RETURNING {key})
        SELECT array_agg({key}) FROM tombstones
        """, [_dump(e.event, event_id=e.id) for e in batch])


async def apply_runs_deleted(conn: asyncpg.Connection, batch: Sequence[Envelope]) -> None:
    """Remember the deleted runs, then remove their rows from every read model: the run, its
    items, scores with their history, failures, the reports without a score, retracted verdicts
    and the cases counted for score requests about it (the requests themselves stay, their
    cases of the run withdrawn)."""
    run_ids = await _tombstones(conn, "deleted_runs", "run_id", batch)
    await conn.execute("""
        DELETE FROM score_history h USING scores s
        WHERE s.run_id = ANY($1::text[]) AND h.score_id = s.score_id;
        """, run_ids)
    # A verdict taken back has its history and no score row.
    await conn.execute("""
        DELETE FROM score_history h USING retracted_scores t
        WHERE t.run_id = ANY($1::text[]) AND h.score_id = t.score_id;
        """, run_ids)
    # A score request's own row (what was asked, of which runs) stays: its progress then counts
    # the deleted run's cases as withdrawn and is done, rather than unknown (docs/adr/0009).
    for table in ("scores", "evaluation_failures", "score_request_cases",
                  "scoreless_cases", "retracted_scores", "run_items"):
        await conn.execute(f"DELETE FROM {table} WHERE run_id = ANY($1::text[])", run_ids)
    await conn.execute("DELETE FROM runs WHERE id = ANY($1::text[])", run_ids)


async def apply_datasets_deleted(conn: asyncpg.Connection, batch: Sequence[Envelope]) -> None:
    """Remember the deleted datasets and remove them with their items. Their runs go by their
    own RunDeleted events, which ingest publishes before this one; a run of the dataset that
    arrives later (from a rebuild's order) is skipped by the dataset's tombstone."""
    dataset_ids = await _tombstones(conn, "deleted_datasets", "dataset_id", batch)
    for table in ("dataset_items", "dataset_item_upserts", "deleted_dataset_items"):
        await conn.execute(f"DELETE FROM {table} WHERE dataset_id = ANY($1::text[])",
                           dataset_ids)
    await conn.execute("DELETE FROM datasets WHERE id = ANY($1::text[])", dataset_ids)


async def apply_retractions(conn: asyncpg.Connection, batch: Sequence[Envelope]) -> None:
    """Remember each verdict's latest retraction, then move a verdict it takes back (one not
    newer than it) from the scores to their history. A verdict arriving later that is not newer
    than the retraction goes to the history only (_upsert_scores), so the order does not
    matter."""
    await conn.execute(f"""
        WITH taken AS (
            INSERT INTO retracted_scores AS t (run_item_id, name, score_id, run_id, retracted_by,
                reason, retracted_at, event_id)
            SELECT DISTINCT ON (run_item_id, name) run_item_id, name, score_id, run_id,
                retracted_by, reason, retracted_at, event_id
            FROM jsonb_to_recordset($1::jsonb) AS e(run_item_id text, name text, score_id text,
                run_id text, retracted_by text, reason text, retracted_at timestamptz,
                event_id text)
            WHERE NOT EXISTS (SELECT 1 FROM deleted_runs d WHERE d.run_id = e.run_id)
              AND (e.run_id IS NOT NULL OR e.retracted_at >= ({RETAINED}))
            ORDER BY run_item_id, name, retracted_at DESC, event_id DESC
            ON CONFLICT (run_item_id, name) DO UPDATE SET score_id = excluded.score_id,
                run_id = excluded.run_id, retracted_by = excluded.retracted_by,
                reason = excluded.reason, retracted_at = excluded.retracted_at,
                event_id = excluded.event_id
            WHERE (t.retracted_at, t.event_id) < (excluded.retracted_at, excluded.event_id)
            RETURNING run_item_id, name, retracted_at),
        withdrawn AS (
            DELETE FROM scores s USING taken r
            WHERE (s.run_item_id, s.name, s.source) = (r.run_item_id, r.name, 'manual')
              AND s.observed_at <= r.retracted_at
            RETURNING s.*)
        INSERT INTO score_history (event_id, score_id, value, string_value, comment, created_by,
            evaluator, evaluator_version, spec_hash, request_id, observed_at, outside_runs)
        SELECT event_id, score_id, value, string_value, comment, created_by, evaluator,
            evaluator_version, spec_hash, request_id, observed_at,
            {OUTSIDE_RUNS.format(row="withdrawn")} FROM withdrawn
        ON CONFLICT (event_id) DO NOTHING
        """, [_dump(e.event, event_id=e.id) for e in batch])


async def _ignore(conn: asyncpg.Connection, batch: Sequence[Envelope]) -> None:
    """Score requests change no read model here; their progress is counted from the
    ScoreRequestsIssued and ScoringCompleted events. Scoring rules neither: they decide which
    specs a production trace carries as it is posted (ingest), and the scores say the rest."""


# Event types whose handlers need no applied_events row (docs/adr/0001, amendments): scores and
# score_history are ScoreRecorded's own ledger; a ScoringCompleted is one row per (request, run
# item), a key only ever given one event id and one time, so its guarded upsert makes a repeat a
# no-op; a ScoreRequested changes nothing here.
# Together they are three of every four events in a run.
SELF_LEDGERED: frozenset[type[Event]] = frozenset({ScoreRecorded, ScoringCompleted,
                                                   ScoreRequested, CaseScored})

# The whole event-to-handler map, in the order a batch is applied.
HANDLERS: dict[type[Event], Callable[[asyncpg.Connection, Sequence[Envelope]], Awaitable[None]]] = {
    DatasetCreated: apply_dataset_created,
    EvaluatorsConfigured: apply_evaluators_configured,
    DatasetBaselineSet: apply_baselines,
    DatasetItemsUpserted: apply_items_upserted,
    DatasetItemsDeleted: apply_items_deleted,
    RunStarted: apply_run_started,
    TraceCompleted: apply_traces,
    ScoreRecorded: apply_scores,
    EvaluationFailed: apply_failures,
    CaseScored: apply_case_scored,
    ScoreRetracted: apply_retractions,
    ScoreRequested: _ignore,
    ScoringRuleSet: _ignore,
    ScoringRuleDeleted: _ignore,
    ScoreRequestsIssued: apply_score_requests_issued,
    ScoringCompleted: apply_scoring_completed,
    # Last: a batch's other events about a deleted run or dataset are applied, then removed.
    RunDeleted: apply_runs_deleted,
    DatasetDeleted: apply_datasets_deleted,
}


async def _lock_runs(conn: asyncpg.Connection, batch: Sequence[Envelope]) -> None:
    """Transaction-scoped advisory locks on the runs the batch writes rows of: shared, or
    exclusive for the runs it deletes. Without them a deletion and a write of the same run in
    two concurrent transactions (two projection processes, or a rebuild's workers) could each
    miss the other: the write checks for the tombstone before the deletion commits, the deletion
    removes rows before the write commits, and the written rows outlive the run. With them the
    deletion waits for the writes in flight and removes their rows; later writes see the
    tombstone. In key order, so that two deletions cannot deadlock."""
    deleted = {e.event.run_id for e in batch  # type: ignore[attr-defined]
               if type(e.event) is RunDeleted}
    runs = {run_id for e in batch if (run_id := getattr(e.event, "run_id", None))}
    if runs:
        await conn.execute("""
            SELECT CASE WHEN exclusive THEN pg_advisory_xact_lock(key)::text
                        ELSE pg_advisory_xact_lock_shared(key)::text END
            FROM (SELECT key, bool_or(exclusive) AS exclusive
                  FROM unnest($1::text[], $2::boolean[]) AS r(run_id, exclusive),
                       -- Per read-model schema: a rebuild's workers and the live consumer,
                       -- writing different schemas, need not wait for each other.
                       LATERAL (SELECT hashtextextended(
                           current_schema() || '/run/' || run_id, 0)) AS k(key)
                  GROUP BY key ORDER BY key) AS ordered
            """, list(runs), [r in deleted for r in runs])


async def apply_batch(conn: asyncpg.Connection, envelopes: Sequence[Envelope]) -> int:
    """Apply the not-yet-applied events of a batch; call inside a transaction. Returns how many
    events were new (counting every event of the types in SELF_LEDGERED, whose handlers alone
    know whether they had been applied)."""
    # The first of a repeated id wins, as across batches (where applied_events skips the later
    # one): the two copies of a trace posted twice share an id but not their receipt time.
    first: dict[str, Envelope] = {}
    for env in envelopes:
        first.setdefault(env.id, env)
    unique = list(first.values())
    if not unique:
        return 0
    await _lock_runs(conn, unique)
    ledgered = [e.id for e in unique if type(e.event) not in SELF_LEDGERED]
    fresh_ids = {r[0] for r in await conn.fetch(
        "INSERT INTO applied_events (event_id) SELECT unnest($1::text[])"
        " ON CONFLICT DO NOTHING RETURNING event_id", ledgered)} if ledgered else set()
    by_type: dict[type[Event], list[Envelope]] = defaultdict(list)
    for env in unique:
        if env.id in fresh_ids or type(env.event) in SELF_LEDGERED:
            by_type[type(env.event)].append(env)
    for event_type, handler in HANDLERS.items():
        if by_type.get(event_type):
            await handler(conn, by_type[event_type])
    return len(fresh_ids) + sum(len(by_type[t]) for t in SELF_LEDGERED if t in by_type)
