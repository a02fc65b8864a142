"""The yardsticks evalstream is measured against, on the same Postgres and the same items:

- the seed's design (the Observ plan's EvaluatorRunnerService): for each run item and each
  evaluator, look the score up, then INSERT or UPDATE it — one statement at a time, each awaited
  and committed on its own, as an ORM loop does;
- the raw limit: the same score rows written with COPY into a copy of the read model's `scores`
  table (same keys and indexes).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import asyncpg

from bench.workload import SCORES_PER_TRACE, SPECS, scoring_case
from schemas.common import deterministic_id, score_id, utcnow
from schemas.traces import ScoringCase
from services.database import checked_schema
from services.evaluator.evaluators import REGISTRY

SEED_TABLES = """
CREATE TABLE {schema}.run_items (
    id              text PRIMARY KEY,
    run_id          text NOT NULL,
    dataset_item_id text NOT NULL,
    trace_id        text NOT NULL,
    input           jsonb,
    output          jsonb,
    expected_output jsonb
);
CREATE TABLE {schema}.scores (
    id                bigserial PRIMARY KEY,
    run_item_id       text NOT NULL,
    name              text NOT NULL,
    source            text NOT NULL,
    value             double precision NOT NULL,
    data_type         text NOT NULL,
    string_value      text,
    comment           text,
    evaluator         text,
    evaluator_version text,
    spec_hash         text,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL
);
CREATE UNIQUE INDEX ON {schema}.scores (run_item_id, name, source);
"""

SCORE_COLUMNS = ("score_id", "run_item_id", "run_id", "dataset_item_id", "trace_id", "name",
                 "source", "value", "data_type", "string_value", "comment", "created_by",
                 "evaluator", "evaluator_version", "spec_hash", "request_id", "observed_at",
                 "event_id")


@dataclass
class Rate:
    rows: int
    seconds: float

    @property
    def per_s(self) -> float:
        return self.rows / self.seconds

    def as_dict(self) -> dict:
        return {"rows": self.rows, "seconds": round(self.seconds, 3),
                "rows_per_s": round(self.per_s, 1)}


async def prepare(conn: asyncpg.Connection, schema: str, tag: str, run_id: str, n: int) -> None:
    """The seed's tables, with `n` run items already there (not timed)."""
    schema = checked_schema(schema)
    await conn.execute(f"CREATE SCHEMA {schema}")
    await conn.execute(SEED_TABLES.format(schema=schema))
    records = []
    for i in range(n):
        case = scoring_case(tag, run_id, i)
        records.append((case.run_item_id, run_id, case.dataset_item_id, case.trace_id,
                        json.dumps(case.input), json.dumps(case.output),
                        json.dumps(case.expected_output)))
    await conn.copy_records_to_table("run_items", schema_name=schema, records=records)


async def seed_loop(conn: asyncpg.Connection, schema: str, page: int = 1000) -> Rate:
    """Score every run item of the seed's table the seed's way; returns scores written per second.

    Each statement runs in autocommit, one round trip and one commit per row: kinder to the
    baseline than an ORM's BEGIN/INSERT/COMMIT per save."""
    schema = checked_schema(schema)
    select = f"SELECT id FROM {schema}.scores WHERE run_item_id = $1 AND name = $2" \
             " AND source = $3 LIMIT 1"
    insert = f"""INSERT INTO {schema}.scores (run_item_id, name, source, value, data_type,
        string_value, comment, evaluator, evaluator_version, spec_hash, created_at, updated_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now(), now())"""
    update = f"""UPDATE {schema}.scores SET value = $2, data_type = $3, string_value = $4,
        comment = $5, evaluator = $6, evaluator_version = $7, spec_hash = $8, updated_at = now()
        WHERE id = $1"""
    written, last = 0, ""
    started = time.perf_counter()
    while True:  # find_each: pages of run items in key order
        rows = await conn.fetch(
            f"SELECT id, run_id, dataset_item_id, trace_id, input, output, expected_output"
            f" FROM {schema}.run_items WHERE id > $1 ORDER BY id LIMIT $2", last, page)
        if not rows:
            break
        last = rows[-1]["id"]
        for row in rows:
            case = ScoringCase.model_construct(
                run_id=row["run_id"], dataset_item_id=row["dataset_item_id"],
                trace_id=row["trace_id"], input=json.loads(row["input"]),
                output=json.loads(row["output"]),
                expected_output=json.loads(row["expected_output"]), evaluators=SPECS)
            for spec in SPECS:
                evaluator = REGISTRY[spec.type]
                score = evaluator.fn(case, spec)
                if score is None:
                    continue
                existing = await conn.fetchval(select, row["id"], spec.score_name,
                                               evaluator.source)
                if existing is None:
                    await conn.execute(insert, row["id"], spec.score_name, evaluator.source,
                                       score.value, score.data_type, score.string_value,
                                       score.comment, spec.type, evaluator.version,
                                       spec.spec_hash())
                else:
                    await conn.execute(update, existing, score.value, score.data_type,
                                       score.string_value, score.comment, spec.type,
                                       evaluator.version, spec.spec_hash())
                written += 1
    return Rate(written, time.perf_counter() - started)


def score_rows(tag: str, run_id: str, indices: range) -> list[tuple]:
    """The read model's score rows for these items, computed by the same evaluator functions."""
    now = utcnow()
    rows = []
    for i in indices:
        case = scoring_case(tag, run_id, i)
        rid = case.run_item_id
        for spec in SPECS:
            evaluator = REGISTRY[spec.type]
            score = evaluator.fn(case, spec)
            sid = score_id(rid, spec.score_name, evaluator.source)
            rows.append((sid, rid, run_id, case.dataset_item_id, case.trace_id, spec.score_name,
                         evaluator.source, score.value, score.data_type, score.string_value,
                         score.comment, None, spec.type, evaluator.version, spec.spec_hash(),
                         None, now, deterministic_id("score-event", rid, sid)))
    return rows


async def copy_limit(conn: asyncpg.Connection, schema: str, like: str, tag: str, run_id: str,
                     n: int, chunk: int = 20_000) -> Rate:
    """COPY the score rows of `n` items into a copy of `like` (keys and indexes included); only
    the COPY calls are timed."""
    schema = checked_schema(schema)
    await conn.execute(f"CREATE TABLE {schema}.scores_copy (LIKE {like} INCLUDING ALL)")
    per_chunk = max(1, chunk // SCORES_PER_TRACE)
    elapsed, written = 0.0, 0
    for start in range(0, n, per_chunk):
        rows = score_rows(tag, run_id, range(start, min(start + per_chunk, n)))
        t = time.perf_counter()
        await conn.copy_records_to_table("scores_copy", schema_name=schema, records=rows,
                                         columns=SCORE_COLUMNS)
        elapsed += time.perf_counter() - t
        written += len(rows)
    return Rate(written, elapsed)
