"""The dashboard contract: documented SQL views, in a schema of their own, over the read models,
readable by a read-only role, so Grafana, Metabase or psql see the figures the query API gives.

The views name the read-model schema they read explicitly; pointing them at another one (a
rebuilt copy) is one call of `create_dashboard_views` inside the caller's transaction, so readers
switch atomically. docs/dashboards.md shows how to query them.
"""

from __future__ import annotations

import logging

import asyncpg
from pydantic import SecretStr

from services.database import checked_schema
from services.projections.views import (
    ITEM_SCORE_JSON,
    RUN_SUMMARY_TEMPLATE,
    SCORE_SUMMARY_TEMPLATE,
    TRACE_SCORES_TEMPLATE,
    sql_template,
)

log = logging.getLogger(__name__)

READER_ROLE = "evalstream_reader"

ITEM_RESULTS_TEMPLATE = """
SELECT r.id AS run_id, r.name AS run_name, r.dataset_id, d.id AS dataset_item_id,
       coalesce(ri.status, 'missing') AS status, ri.trace_id, d.input, d.expected_output,
       ri.output, ri.error, ri.latency_ms, ri.input_tokens, ri.output_tokens, ri.cost,
       (SELECT jsonb_object_agg(name, value)
        FROM (SELECT name, """ + ITEM_SCORE_JSON + """ AS value FROM {rm}scores s
              WHERE s.run_item_id = ri.run_item_id GROUP BY name) n) AS scores,
       d.metadata AS item_metadata, ri.metadata AS trace_metadata
FROM {rm}runs r
JOIN {rm}dataset_items d ON d.dataset_id = r.dataset_id
LEFT JOIN {rm}run_items ri ON ri.run_id = r.id AND ri.dataset_item_id = d.id
"""

# Every ordered pair of distinct runs of a dataset: filter on baseline_run_id and run_id, and the
# LATERAL side only aggregates those two runs' scores.
ITEM_COMPARISON_TEMPLATE = """
SELECT b.id AS baseline_run_id, r.id AS run_id, r.dataset_id, c.dataset_item_id, c.score_name,
       c.baseline_value, c.value, c.value - c.baseline_value AS delta,
       CASE WHEN c.baseline_value IS NULL THEN 'only_in_run'
            WHEN c.value IS NULL THEN 'only_in_baseline'
            WHEN c.value > c.baseline_value THEN 'improved'
            WHEN c.value < c.baseline_value THEN 'regressed'
            ELSE 'unchanged' END AS change,
       coalesce((SELECT status FROM {rm}run_items x
                 WHERE x.run_id = b.id AND x.dataset_item_id = c.dataset_item_id), 'missing')
           AS baseline_status,
       coalesce((SELECT status FROM {rm}run_items x
                 WHERE x.run_id = r.id AND x.dataset_item_id = c.dataset_item_id), 'missing')
           AS status
FROM {rm}runs b
JOIN {rm}runs r ON r.dataset_id = b.dataset_id AND r.id <> b.id
CROSS JOIN LATERAL (
    SELECT coalesce(x.dataset_item_id, y.dataset_item_id) AS dataset_item_id,
           coalesce(x.name, y.name) AS score_name, x.value AS baseline_value, y.value AS value
    FROM (SELECT dataset_item_id, name, avg(value) AS value FROM {rm}scores
          WHERE run_id = b.id AND dataset_item_id IS NOT NULL AND data_type <> 'categorical'
          GROUP BY dataset_item_id, name) x
    FULL JOIN (SELECT dataset_item_id, name, avg(value) AS value FROM {rm}scores
               WHERE run_id = r.id AND dataset_item_id IS NOT NULL
                 AND data_type <> 'categorical'
               GROUP BY dataset_item_id, name) y
      ON y.dataset_item_id = x.dataset_item_id AND y.name = x.name
) c
"""

# Per run, per key of its items' metadata and each of its values (an array's elements apart,
# strings, numbers and booleans as text), per score name: the figures /breakdown gives the group.
METADATA_SCORES_TEMPLATE = """
SELECT r.id AS run_id, r.dataset_id, g.metadata_key, g.metadata_value, g.score_name, g.average,
       g.pass_rate, g.count, g.items
FROM {rm}runs r
CROSS JOIN LATERAL (
    SELECT m.key AS metadata_key, m.value AS metadata_value, s.name AS score_name,
           avg(s.value) FILTER (WHERE s.data_type <> 'categorical') AS average,
           count(*) FILTER (WHERE s.value >= coalesce(s.pass_threshold, {pass})
                            AND s.data_type <> 'categorical')::float8
               / nullif(count(*) FILTER (WHERE s.data_type <> 'categorical'), 0) AS pass_rate,
           count(*) AS count, count(DISTINCT m.run_item_id) AS items
    FROM (SELECT ri.run_item_id, e.key, x.value
          FROM {rm}run_items ri
          JOIN {rm}dataset_items di ON di.dataset_id = r.dataset_id AND di.id = ri.dataset_item_id
          CROSS JOIN LATERAL jsonb_each(CASE WHEN jsonb_typeof(di.metadata) = 'object'
                                             THEN di.metadata END) AS e(key, v)
          CROSS JOIN LATERAL (
              SELECT DISTINCT el #>> '{{}}' AS value
              FROM jsonb_array_elements(CASE WHEN jsonb_typeof(e.v) = 'array' THEN e.v
                                             ELSE jsonb_build_array(e.v) END) AS el
              WHERE jsonb_typeof(el) IN ('string', 'number', 'boolean')) x
          WHERE ri.run_id = r.id) m
    JOIN {rm}scores s ON s.run_item_id = m.run_item_id
    GROUP BY m.key, m.value, s.name
) g
"""

# name → (template, what the view is, {column: what it holds}); the comments are the contract.
VIEWS: dict[str, tuple[str, str, dict[str, str]]] = {
    "run_summary": (RUN_SUMMARY_TEMPLATE, (
        "One row per run: items, cost, tokens, latency and pass rate; the figures of "
        "GET /v1/runs/{id} and of each run in GET /v1/compare."), {
        "run_id": "Run id.",
        "started_at": "When the run was created (UTC).",
        "total_items": "Items in the dataset when the run started.",
        "completed_items": "Run items whose trace succeeded.",
        "failed_items": "Run items whose trace failed.",
        "missing_items": "Items of the dataset the run has no trace for.",
        "total_cost": "Sum of the traces' cost (USD).",
        "total_tokens": "Sum of the traces' input and output tokens.",
        "latency_p50_ms": "Median trace latency (percentile_cont, traces reporting one).",
        "latency_p95_ms": "95th percentile trace latency (percentile_cont).",
        "items_with_scores": "Run items with at least one score.",
        "pass_rate": "Share of the run's boolean and numeric scores that pass (value >= "
                     "their spec's pass_threshold, default 0.5).",
        "evaluation_failures": "Evaluators that failed on an item of the run.",
        "evaluation_input_tokens": "Input tokens the evaluators' models (the LLM judge) used "
                                   "for the run's current scores, as their endpoints reported.",
        "evaluation_output_tokens": "Output tokens the evaluators' models used for them.",
    }),
    "score_summary": (SCORE_SUMMARY_TEMPLATE, (
        "One row per run and score name: average, pass rate (value >= the spec's "
        "pass_threshold, default 0.5) and count of the "
        "scores, and the count per label of categorical ones; the per-score figures of the run "
        "summary and of GET /v1/compare."), {
        "score_name": "Score name, e.g. exact_match.",
        "average": "Mean value of the run's boolean and numeric scores of that name.",
        "pass_rate": "Share of those scores at or above their pass_threshold (default "
                     "0.5).",
        "count": "Number of the run's scores of that name, categorical ones included.",
        "labels": "Label -> count of the categorical scores of that name (NULL if none).",
    }),
    "item_results": (ITEM_RESULTS_TEMPLATE, (
        "One row per run and item of its dataset: status (succeeded, failed, or missing when "
        "the run has no trace for the item), output and scores."), {
        "status": "succeeded, failed, or missing (no trace of the run for this item).",
        "scores": "Score name -> the item's value (mean over sources, normally one), or the "
                  "label of a categorical score.",
        "item_metadata": "The dataset item's metadata (its category, tags ...), to group by.",
        "trace_metadata": "The metadata the run's trace of the item was posted with.",
    }),
    "metadata_scores": (METADATA_SCORES_TEMPLATE, (
        "One row per run, key of its items' metadata, value of that key and score name: the "
        "scores' average, pass rate and count over the run's items with that value, as "
        "GET /v1/runs/{id}/breakdown?by=item.<key> gives them; filter on run_id and "
        "metadata_key."), {
        "metadata_key": "A top-level key of the dataset items' metadata, e.g. category.",
        "metadata_value": "One value of it as text (an array's elements one by one; strings, "
                          "numbers and booleans only).",
        "average": "Mean value of the boolean and numeric scores of that name in the group.",
        "pass_rate": "Share of them at or above their pass_threshold (default 0.5).",
        "count": "Number of scores of that name in the group, categorical ones included.",
        "items": "Run items of the group with a score of that name.",
    }),
    "item_comparison": (ITEM_COMPARISON_TEMPLATE, (
        "One row per baseline run, compared run (same dataset), item and boolean or numeric "
        "score name either has: both values, delta and change; filter on baseline_run_id and "
        "run_id."), {
        "baseline_value": "The baseline run's value for the item and score name.",
        "value": "The compared run's value for the item and score name.",
        "delta": "value - baseline_value.",
        "change": "improved, regressed, unchanged, only_in_run or only_in_baseline.",
        "baseline_status": "Status of the item in the baseline run (missing: no trace).",
        "status": "Status of the item in the compared run (missing: no trace).",
    }),
    "trace_scores": (TRACE_SCORES_TEMPLATE, (
        "One row per current score of a trace posted outside any run (production traffic), "
        "with the trace's completion time, status and metadata: production scores over time, "
        "the figures of GET /v1/monitoring; filter on completed_at."), {
        "run_item_id": "The trace's run item (derived from its trace id).",
        "completed_at": "When the trace completed (UTC): the time its scores count at.",
        "status": "The trace's status: succeeded or failed.",
        "trace_metadata": "The metadata the trace was posted with, to group or filter by.",
        "score_name": "Score name, e.g. exact_match.",
        "value": "The score's value (boolean 1/0, numeric, or 0 for a categorical score).",
        "label": "The label of a categorical score (NULL otherwise).",
        "passed": "value >= pass_threshold (default 0.5); NULL for a categorical score.",
        "pass_threshold": "The spec's pass_threshold, NULL when it gives none (0.5 applies).",
        "observed_at": "Time of the fact scored (the trace's completion, or a rescoring).",
    }),
}


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


async def _replace_view(conn: asyncpg.Connection, qualified: str, body: str) -> None:
    try:
        # In place, so the view keeps its grants and any view a dashboard built on top of it.
        async with conn.transaction():
            await conn.execute(f"CREATE OR REPLACE VIEW {qualified} AS {body}")
    except asyncpg.InvalidTableDefinitionError:
        # The columns changed (a newer definition): only then is the view dropped and re-created.
        await conn.execute(f"DROP VIEW {qualified}")
        await conn.execute(f"CREATE VIEW {qualified} AS {body}")


async def _ensure_role(conn: asyncpg.Connection, role: str) -> bool:
    """Create the read-only role unless it exists; False when this user may not create it."""
    if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
        return True
    try:
        async with conn.transaction():
            # LOGIN without a password: a trusted local connection can use it as is; elsewhere
            # an administrator gives it a password (docs/dashboards.md).
            await conn.execute(f"""
                DO $$ BEGIN
                    CREATE ROLE "{role}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
                EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
                END $$""")
    except asyncpg.InsufficientPrivilegeError:
        log.warning("cannot create role %s (no CREATEROLE); the dashboard views are created "
                    "but not granted to it", role)
        return False
    return True


async def _set_password(conn: asyncpg.Connection, role: str, password: str) -> None:
    try:
        async with conn.transaction():
            await conn.execute(f'ALTER ROLE "{role}" PASSWORD {_literal(password)}')
    except asyncpg.InsufficientPrivilegeError:
        log.warning("cannot give role %s its password (no CREATEROLE); give it one as an "
                    "administrator: ALTER ROLE %s PASSWORD '…'", role, role)


async def create_dashboard_views(conn: asyncpg.Connection, read_model_schema: str,
                                 dashboard_schema: str, *, reader_role: str = READER_ROLE,
                                 reader_password: SecretStr | None = None) -> None:
    """(Re)create the dashboard views in `dashboard_schema` over `read_model_schema`, with their
    comments, and let `reader_role` (created if need be, and given `reader_password` when one is
    set: a dashboard connecting over the network needs one) read them and nothing else.

    Idempotent. Inside a caller's transaction every view switches when that transaction commits;
    outside one it runs in its own."""
    rm = checked_schema(read_model_schema)
    dash = checked_schema(dashboard_schema)
    role = checked_schema(reader_role)
    async with conn.transaction():
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{dash}"')
        await conn.execute(f'COMMENT ON SCHEMA "{dash}" IS ' + _literal(
            f"evalstream dashboard views over the read models in schema {rm}; "
            "read them as role " + role + "."))
        for name, (template, about, columns) in VIEWS.items():
            qualified = f'"{dash}"."{name}"'
            await _replace_view(conn, qualified, sql_template(template, f'"{rm}".'))
            await conn.execute(f"COMMENT ON VIEW {qualified} IS {_literal(about)}")
            for column, text in columns.items():
                await conn.execute(
                    f'COMMENT ON COLUMN {qualified}."{column}" IS {_literal(text)}')
        if await _ensure_role(conn, role):
            # The views run with their owner's rights, so the role needs no access to the
            # read-model tables themselves.
            await conn.execute(f'GRANT USAGE ON SCHEMA "{dash}" TO "{role}"')
            await conn.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA "{dash}" TO "{role}"')
            if reader_password is not None:
                await _set_password(conn, role, reader_password.get_secret_value())
