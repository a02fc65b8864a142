"""Read queries over the read models: what the query API answers, one function per question.

The run and score summaries are SQL templates shared with the dashboard views
(services/projections/dashboard.py), so the API and the views cannot disagree on a figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

# A score passes at or above its spec's `pass_threshold` (scores.pass_threshold), else this.
from schemas.common import PASS_THRESHOLD

# Categorical scores are counted per label; only boolean and numeric scores have a value that
# averages, passes or fails, and compares. {rm}-free SQL of an item's scores of one name, as
# JSON: the mean value, or (a name with categorical scores only) the label.
ITEM_SCORE_JSON = ("coalesce(to_jsonb(avg(value) FILTER (WHERE data_type <> 'categorical')), "
                   "to_jsonb(min(string_value)))")

# {rm} is the read-model schema prefix: "" (the search_path decides) for the API, a quoted
# schema name plus "." for the dashboard views. {pass} is PASS_THRESHOLD as a literal, since a
# view cannot take parameters. Per-run figures are LATERAL subqueries so that a filter on the
# run (`= $1`, `= ANY($1)` or a dashboard's WHERE) is applied before anything is aggregated.
# The items of run r's dataset it has no trace for (the summary's and the scoring's).
_MISSING_ITEMS = """
    FROM {rm}dataset_items di
    WHERE di.dataset_id = r.dataset_id
      AND NOT EXISTS (SELECT 1 FROM {rm}run_items x
                      WHERE x.run_id = r.id AND x.dataset_item_id = di.id)"""

RUN_SUMMARY_TEMPLATE = """
SELECT r.id AS run_id, r.dataset_id, d.name AS dataset_name, r.name AS run_name, r.started_at,
       r.total_items, i.completed_items, i.failed_items, m.missing_items,
       i.total_cost, i.total_tokens, i.latency_p50_ms, i.latency_p95_ms,
       s.items_with_scores,
       greatest(r.total_items - s.items_with_scores, 0) AS items_without_scores,
       s.pass_rate, f.evaluation_failures, s.evaluation_input_tokens, s.evaluation_output_tokens
FROM {rm}runs r
LEFT JOIN {rm}datasets d ON d.id = r.dataset_id
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE status = 'succeeded') AS completed_items,
           count(*) FILTER (WHERE status = 'failed') AS failed_items,
           coalesce(sum(cost), 0)::float8 AS total_cost,
           coalesce(sum(coalesce(input_tokens, 0) + coalesce(output_tokens, 0)), 0)::bigint
               AS total_tokens,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS latency_p50_ms,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS latency_p95_ms
    FROM {rm}run_items WHERE run_id = r.id
) i
CROSS JOIN LATERAL (
    SELECT count(*) AS items_with_scores, sum(passed)::float8 / nullif(sum(n), 0) AS pass_rate,
           coalesce(sum(input_tokens), 0)::bigint AS evaluation_input_tokens,
           coalesce(sum(output_tokens), 0)::bigint AS evaluation_output_tokens
    FROM (SELECT count(*) FILTER (WHERE data_type <> 'categorical') AS n,
                 count(*) FILTER (WHERE value >= coalesce(pass_threshold, {pass})
                                  AND data_type <> 'categorical') AS passed,
                 sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens
          FROM {rm}scores WHERE run_id = r.id GROUP BY run_item_id) per_item
) s
CROSS JOIN LATERAL (
    SELECT count(*) AS evaluation_failures FROM {rm}evaluation_failures WHERE run_id = r.id
) f
CROSS JOIN LATERAL (SELECT count(*) AS missing_items """ + _MISSING_ITEMS + """) m
"""

# Per name, from rows grouped by (name, label of a categorical score) — `score_name`,
# `categorical`, `label`, `n` (scores), `total` (their sum) and `passed` —: average and pass rate
# of the boolean and numeric ones, count of all, and {label: count} of the categorical ones (NULL
# when there are none). The run summary's and the monitoring's per-score figures.
SCORE_FIGURES = """
           sum(total) FILTER (WHERE NOT categorical)
               / nullif(sum(n) FILTER (WHERE NOT categorical), 0) AS average,
           sum(passed) FILTER (WHERE NOT categorical)::float8
               / nullif(sum(n) FILTER (WHERE NOT categorical), 0) AS pass_rate,
           sum(n)::bigint AS count,
           jsonb_object_agg(label, n) FILTER (WHERE categorical AND label IS NOT NULL) AS labels"""

# Per name, from one pass over the run's scores grouped by (name, label of a categorical score).
SCORE_SUMMARY_TEMPLATE = """
SELECT r.id AS run_id, r.dataset_id, r.name AS run_name, s.score_name, s.average, s.pass_rate,
       s.count, s.labels
FROM {rm}runs r
CROSS JOIN LATERAL (
    SELECT score_name, """ + SCORE_FIGURES + """
    FROM (SELECT name AS score_name, data_type = 'categorical' AS categorical,
                 CASE WHEN data_type = 'categorical' THEN string_value END AS label,
                 count(*) AS n, sum(value) AS total,
                 count(*) FILTER (WHERE value >= coalesce(pass_threshold, {pass})) AS passed
          FROM {rm}scores WHERE run_id = r.id
          GROUP BY 1, 2, 3) g
    GROUP BY score_name
) s
"""

# Rows of SCORE_FIGURES (aliased `f`) as one JSON object {name: {average, pass_rate, count,
# labels?}}, as summaries give them.
SCORES_JSON = """jsonb_object_agg(f.score_name, jsonb_build_object(
                    'average', f.average, 'pass_rate', f.pass_rate, 'count', f.count)
                    || CASE WHEN f.labels IS NULL THEN '{{}}'::jsonb
                            ELSE jsonb_build_object('labels', f.labels) END)"""

# The columns of a score `s` of a trace posted outside any run: its label when categorical, and
# whether it passes (NULL for a categorical score, which neither passes nor fails). Those of
# TRACE_SCORES_TEMPLATE, and those the monitoring reads trace by trace (monitoring.py).
TRACE_SCORE_COLUMNS = """s.name AS score_name, s.source, s.data_type, s.value,
       CASE WHEN s.data_type = 'categorical' THEN s.string_value END AS label,
       s.pass_threshold,
       CASE WHEN s.data_type <> 'categorical'
            THEN s.value >= coalesce(s.pass_threshold, {pass}) END AS passed,
       s.comment, s.evaluator, s.evaluator_version, s.observed_at"""

# One row per current score of a trace posted outside any run (production traffic): the trace's
# completion time, status and metadata beside the score's columns (TRACE_SCORE_COLUMNS, which
# the monitoring's figures read too). The dashboard view `trace_scores`. Such a trace's run
# item id derives from its trace id alone, so its scores' run_id is NULL too; saying so lets
# the planner read them by the index on scores (run_id, …).
TRACE_SCORES_TEMPLATE = """
SELECT t.run_item_id, t.trace_id, t.completed_at, t.status, t.metadata AS trace_metadata,
       """ + TRACE_SCORE_COLUMNS + """
FROM {rm}run_items t
JOIN {rm}scores s ON s.run_item_id = t.run_item_id AND s.run_id IS NULL
WHERE t.run_id IS NULL
"""


def sql_template(template: str, read_model_prefix: str = "") -> str:
    return template.format(rm=read_model_prefix, **{"pass": repr(float(PASS_THRESHOLD))})


_RUN_SUMMARIES_SQL = f"""
SELECT s.*, r.metadata, r.evaluators,
       coalesce((SELECT {sql_template(SCORES_JSON)}
                 FROM ({sql_template(SCORE_SUMMARY_TEMPLATE)}) f WHERE f.run_id = r.id),
                '{{}}'::jsonb) AS scores
FROM ({sql_template(RUN_SUMMARY_TEMPLATE)}) s
JOIN runs r ON r.id = s.run_id
WHERE s.run_id = ANY($1::text[])
"""


def _summary(row: asyncpg.Record) -> dict:
    out = dict(row)
    out["id"] = out.pop("run_id")
    out["name"] = out.pop("run_name")
    return out


async def run_summaries(conn: asyncpg.Connection, run_ids: list[str]) -> dict[str, dict]:
    """Summaries of several runs in one statement, by run id (unknown ids are left out)."""
    rows = await conn.fetch(_RUN_SUMMARIES_SQL, run_ids)
    return {row["run_id"]: _summary(row) for row in rows}


async def run_summary(conn: asyncpg.Connection, run_id: str) -> dict | None:
    """Items (completed, failed, missing), cost, tokens, latency p50/p95 (percentile_cont over
    the run items that report a latency), per-score average / pass rate / count, and the overall
    pass rate (share of the run's boolean and numeric scores that pass)."""
    return (await run_summaries(conn, [run_id])).get(run_id)


# Is the run scored? Its traced and missing items, and the succeeded ones whose latest trace the
# evaluator has not reported on yet: a report gives its time to the scores it records, or, with
# none, to scoreless_cases (docs/adr/0011). Apart from the summary, which it slowed by ~80% on a
# run of 100,000 items; alone it takes ~220 ms there, an anti-join of the run's items with its
# scores.
_RUN_SCORING_SQL = sql_template("""
SELECT r.id AS run_id, r.total_items,
       (SELECT count(*) FROM run_items x WHERE x.run_id = r.id) AS traced_items,
       m.missing_items, m.missing_items_at_start,
       (SELECT count(*) FROM run_items x
        WHERE x.run_id = r.id AND x.status = 'succeeded'
          AND NOT EXISTS (SELECT 1 FROM scores s
                          WHERE s.run_id = $1 AND s.run_item_id = x.run_item_id
                            AND s.source <> 'manual' AND s.observed_at >= x.completed_at)
          AND NOT EXISTS (SELECT 1 FROM scoreless_cases c
                          WHERE c.run_id = $1 AND c.run_item_id = x.run_item_id
                            AND c.observed_at >= x.completed_at)) AS items_pending_scoring
FROM runs r CROSS JOIN LATERAL (
    -- the dataset's items without a trace, and of them (in the same pass) those the dataset
    -- held when the run started: upserted by then, and not removed since (a removal prunes
    -- the times before it)
    SELECT count(*) AS missing_items,
           count(*) FILTER (WHERE EXISTS (
               SELECT 1 FROM dataset_item_upserts u
               WHERE (u.dataset_id, u.item_id) = (di.dataset_id, di.id)
                 AND u.upserted_at <= r.started_at)) AS missing_items_at_start
    """ + _MISSING_ITEMS + """) m
WHERE r.id = $1
""")


async def run_scoring(conn: asyncpg.Connection, run_id: str) -> dict | None:
    """How far the run's scoring is: `scored` once every item its dataset held when the run
    started (and still holds) has a trace — items added since are not waited for, nor items
    removed — and the evaluator has reported on every succeeded one (None: no such run)."""
    row = await conn.fetchrow(_RUN_SCORING_SQL, run_id)
    if row is None:
        return None
    return {**dict(row), "scored": traced_enough(row) and row["items_pending_scoring"] == 0}


def traced_enough(scoring) -> bool:
    """Every item the dataset held when the run started, and holds still, has a trace."""
    return scoring["missing_items_at_start"] == 0


# Sort keys of the results: a column, or `score:<name>` (the item's value of that score).
RESULT_SORTS = {"dataset_item_id": "r.dataset_item_id", "latency_ms": "r.latency_ms",
                "cost": "r.cost", "completed_at": "r.completed_at", "status": "r.status"}
Outcome = Literal["passed", "failed", "unscored", "evaluator_failed"]


class InvalidQuery(ValueError):
    """A query parameter that is well-formed but cannot be answered; `field` names it."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(message)
        self.field, self.message, self.status = field, message, status


def dataset_item_join(run_item: str, item: str) -> str:
    """Joins that make `item` the dataset item of run item alias `run_item` (none once the item
    is removed from the dataset), through its run, aliased `item`_run."""
    return (f"LEFT JOIN runs {item}_run ON {item}_run.id = {run_item}.run_id"
            f" LEFT JOIN dataset_items {item} ON {item}.dataset_id = {item}_run.dataset_id"
            f" AND {item}.id = {run_item}.dataset_item_id")


# A group of a breakdown (services/projections/breakdown.py): where the value is read ("item" or
# "trace"), the key path, and the value as text (a string's own text, a number's digits, true).
Group = tuple[str, list[str], str]


def group_condition(metadata: str, path: str, wanted: str) -> str:
    """SQL: the value at key path `path` (a text[] parameter) of the jsonb `metadata`, or an
    element of an array value, has the text `wanted` (a parameter)."""
    value = f"({metadata} #> {path}::text[])"
    return (f"CASE WHEN jsonb_typeof({value}) = 'array' THEN EXISTS ("
            f"SELECT 1 FROM jsonb_array_elements({value}) e"
            f" WHERE e #>> '{{}}' = {wanted}) ELSE {value} #>> '{{}}' = {wanted} END")


@dataclass(frozen=True)
class RunScope:
    """The run items of one run (GET /v1/runs/{id}/results)."""
    run_id: str


@dataclass(frozen=True)
class TraceScope:
    """The run items of one trace id, in a run or not (GET /v1/traces/{id})."""
    trace_id: str


@dataclass(frozen=True)
class ProductionScope:
    """The traces posted outside any run (`run_id IS NULL`: production traffic) completed in
    [since, until), either bound open when None (GET /v1/traces)."""
    since: datetime | None = None
    until: datetime | None = None


Scope = RunScope | TraceScope | ProductionScope


def _results_sql(scope: Scope, sort: str, descending: bool, outcome: Outcome | None,
                 score: str | None, status: str | None,
                 group: Group | None = None) -> tuple[str, list]:
    """The results query for one scope and combination of options. $1 is the pass threshold,
    $2/$3 limit/offset (NULL limit: all); further parameters, the scope's first, are returned
    in order."""
    params: list = []

    def param(value: object) -> str:
        params.append(value)
        return f"${len(params) + 3}"

    # `where` picks the scope's run items; `scores_of` its scores, for a sort by score.
    if isinstance(scope, RunScope):
        run = param(scope.run_id)
        where, scores_of = [f"r.run_id = {run}"], f"run_id = {run}"
    elif isinstance(scope, TraceScope):
        trace = param(scope.trace_id)
        where = [f"r.trace_id = {trace}"]
        scores_of = f"run_item_id IN (SELECT run_item_id FROM run_items WHERE trace_id = {trace})"
    else:
        # The partial index run_items_outside_runs (completed_at) WHERE run_id IS NULL serves
        # these, never reading a run's items.
        where, scores_of = ["r.run_id IS NULL"], "run_id IS NULL"
        if scope.since is not None:
            where.append(f"r.completed_at >= {param(scope.since)}")
        if scope.until is not None:
            where.append(f"r.completed_at < {param(scope.until)}")
    group_join = ""
    if group is not None:
        source, path, text = group
        if source == "item":
            group_join = dataset_item_join("r", "gi")
        where.append(group_condition("r.metadata" if source == "trace" else "gi.metadata",
                                     param(path), param(text)))
    if status is not None:
        where.append(f"r.status = {param(status)}")
    if outcome is not None:
        of_name = f" AND x.name = {param(score)}" if score is not None else ""
        # passed: scored, and every score (of that name) passes; failed: one of them does not.
        # Categorical scores neither pass nor fail. unscored: no score (of that name) at all,
        # e.g. the items still awaiting a person's verdict.
        failing = (f"EXISTS (SELECT 1 FROM scores x WHERE x.run_item_id = r.run_item_id"
                   f"{of_name} AND x.value < coalesce(x.pass_threshold, $1)"
                   " AND x.data_type <> 'categorical')")
        if outcome == "unscored":
            where.append(f"NOT EXISTS (SELECT 1 FROM scores x"
                         f" WHERE x.run_item_id = r.run_item_id{of_name})")
        elif outcome == "evaluator_failed":  # an evaluator (of that name) raised on the item
            where.append(f"EXISTS (SELECT 1 FROM evaluation_failures x"
                         f" WHERE x.run_item_id = r.run_item_id{of_name})")
        elif outcome == "failed":
            where.append(failing)
        else:
            where.append(f"EXISTS (SELECT 1 FROM scores x WHERE x.run_item_id = r.run_item_id"
                         f"{of_name} AND x.data_type <> 'categorical') AND NOT {failing}")
    sort_join = ""
    if sort.startswith("score:"):
        # By value; a categorical score by its label.
        sort_join = (f"LEFT JOIN (SELECT run_item_id,"
                     f" avg(value) FILTER (WHERE data_type <> 'categorical') AS value,"
                     f" min(string_value) AS label FROM scores"
                     f" WHERE {scores_of} AND name = {param(sort[6:])} GROUP BY run_item_id) k"
                     f" ON k.run_item_id = r.run_item_id")
        key = "k.value"
        label_key = "k.label"
    else:
        key, label_key = RESULT_SORTS[sort], "NULL::text"
    direction = "DESC" if descending else "ASC"
    order = (f"sort_key {direction} NULLS LAST, sort_label {direction} NULLS LAST,"
             " dataset_item_id NULLS LAST, trace_id, run_item_id")
    # Only ids and sort keys are ranked and counted, never inputs and outputs; the count comes
    # from a one-row side so that a page past the end still says how many items match.
    return f"""
WITH matching AS (
    SELECT r.run_item_id, r.dataset_item_id, r.trace_id, {key} AS sort_key,
           {label_key} AS sort_label
    FROM run_items r {sort_join} {group_join}
    WHERE {" AND ".join(where)}
), ranked AS (
    SELECT run_item_id, row_number() OVER (ORDER BY {order}) AS pos
    FROM matching ORDER BY pos LIMIT $2 OFFSET $3
)
SELECT t.total, r.run_item_id, r.run_id, ii_run.dataset_id, r.dataset_item_id, r.trace_id,
       r.status, r.input, r.expected_output, r.output, r.error, r.latency_ms, r.input_tokens,
       r.output_tokens, r.cost, r.completed_at, r.metadata, ii.metadata AS item_metadata,
       coalesce(s.scores, '[]'::jsonb) AS scores,
       coalesce(f.failures, '[]'::jsonb) AS evaluation_failures
FROM (SELECT count(*) AS total FROM matching) t
LEFT JOIN (ranked p JOIN run_items r ON r.run_item_id = p.run_item_id
           {dataset_item_join("r", "ii")}) ON true
LEFT JOIN LATERAL (
    SELECT jsonb_agg(jsonb_build_object(
        'name', name, 'value', value, 'data_type', data_type, 'source', source,
        'string_value', string_value, 'comment', comment, 'created_by', created_by,
        'passed', CASE WHEN data_type <> 'categorical'
                       THEN value >= coalesce(pass_threshold, $1) END,
        'pass_threshold', pass_threshold,
        'evaluator', evaluator, 'evaluator_version', evaluator_version,
        'spec_hash', spec_hash, 'observed_at', observed_at) ORDER BY name, source) AS scores
    FROM scores WHERE run_item_id = r.run_item_id
) s ON true
LEFT JOIN LATERAL (
    SELECT jsonb_agg(jsonb_build_object('name', name, 'evaluator', evaluator,
        'evaluator_version', evaluator_version, 'reason', reason) ORDER BY name) AS failures
    FROM evaluation_failures WHERE run_item_id = r.run_item_id
) f ON true
ORDER BY p.pos
""", params


def parse_result_sort(sort: str) -> str:
    if sort in RESULT_SORTS or (sort.startswith("score:") and len(sort) > 6):
        return sort
    raise InvalidQuery("sort", f"unknown sort {sort!r}; use one of "
                               f"{', '.join(RESULT_SORTS)} or score:<score name>")


async def results_page(conn: asyncpg.Connection, scope: Scope, *, limit: int | None = None,
                       offset: int = 0, sort: str = "dataset_item_id", descending: bool = False,
                       outcome: Outcome | None = None, score: str | None = None,
                       status: str | None = None, group: Group | None = None) -> dict:
    """One page of the scope's run items with their scores embedded (each with its run_id and
    dataset_id), and how many items match.

    `sort` is a column of RESULT_SORTS or `score:<name>` (items without that score come last);
    `outcome` keeps items whose scores (of `score`, if given) all pass, of which one fails, or
    that have none; `group` the items of one group of a breakdown."""
    sql, params = _results_sql(scope, parse_result_sort(sort), descending, outcome, score,
                               status, group)
    rows = await conn.fetch(sql, PASS_THRESHOLD, limit, offset, *params)
    items = []
    for row in rows:
        if row["run_item_id"] is None:  # the count's row when the page is empty
            continue
        item = dict(row)
        del item["total"]
        for s in item["scores"]:
            s["display_value"] = display_value(s)
        items.append(item)
    return {"total": rows[0]["total"], "items": items}


def _without_run(page: dict) -> dict:
    """A page of one run's items, or of traces outside runs: the run is not repeated per item."""
    for item in page["items"]:
        del item["run_id"], item["dataset_id"]
    return page


async def run_results_page(conn: asyncpg.Connection, run_id: str, **options) -> dict:
    """One page of a run's items with their scores embedded, and how many items match (see
    results_page for the options)."""
    return _without_run(await results_page(conn, RunScope(run_id), **options))


async def run_results(conn: asyncpg.Connection, run_id: str, **options) -> list[dict]:
    """Every item of a run (or one page of them, see run_results_page) with scores embedded."""
    return (await run_results_page(conn, run_id, **options))["items"]


async def trace_result(conn: asyncpg.Connection, trace_id: str) -> dict | None:
    """The run item of a trace, in a run or not (the latest completed, when several carry its
    id), as a run's results give it, with its run_id and dataset_id; None when unknown."""
    page = await results_page(conn, TraceScope(trace_id), limit=1, sort="completed_at",
                              descending=True)
    return page["items"][0] if page["items"] else None


async def production_results_page(conn: asyncpg.Connection, *, since: datetime | None = None,
                                  until: datetime | None = None, **options) -> dict:
    """A page of the traces posted outside any run, completed in [since, until), newest first,
    as a run's results give its items (outcome, score, status and group as there)."""
    return _without_run(await results_page(
        conn, ProductionScope(since, until), sort="completed_at", descending=True, **options))


def display_value(score: dict) -> str:
    """As the seed shows it: Pass/Fail for booleans, the label for categories, else 2 decimals."""
    if score["data_type"] == "boolean":
        return "Pass" if score["passed"] else "Fail"
    if score["data_type"] == "categorical" and score.get("string_value"):
        return score["string_value"]
    return f"{score['value']:.2f}"


_DATASETS_SQL = """
SELECT d.id, d.name, d.description, d.evaluators, d.created_at,
       (SELECT b.id FROM runs b WHERE b.id = d.baseline_run_id) AS baseline_run_id,
       (SELECT count(*) FROM dataset_items i WHERE i.dataset_id = d.id) AS item_count,
       r.run_count, r.last_run_at,
       count(*) OVER () AS total
FROM datasets d
CROSS JOIN LATERAL (SELECT count(*) AS run_count, max(started_at) AS last_run_at
                    FROM runs WHERE dataset_id = d.id) r
WHERE $1::text IS NULL OR d.id = $1
ORDER BY d.created_at DESC, d.id
LIMIT $2 OFFSET $3
"""


async def datasets_page(conn: asyncpg.Connection, *, limit: int | None = None,
                        offset: int = 0) -> dict:
    """Datasets, newest first, each with its item count, run count and last run time."""
    rows = [dict(r) for r in await conn.fetch(_DATASETS_SQL, None, limit, offset)]
    total = rows[0]["total"] if rows else await conn.fetchval("SELECT count(*) FROM datasets")
    for row in rows:
        del row["total"]
    return {"total": total, "datasets": rows}


async def dataset_summary(conn: asyncpg.Connection, dataset_id: str) -> dict | None:
    """A dataset with its counts and the summary of its latest run (None when it has none)."""
    row = await conn.fetchrow(_DATASETS_SQL, dataset_id, None, 0)
    if row is None:
        return None
    out = dict(row)
    del out["total"]
    latest = await conn.fetchval(
        "SELECT id FROM runs WHERE dataset_id = $1 ORDER BY started_at DESC, id DESC LIMIT 1",
        dataset_id)
    out["latest_run"] = await run_summary(conn, latest) if latest else None
    return out


def parse_metadata_match(text: str) -> tuple[list[str], str]:
    """`KEY=VALUE` (dots in KEY go into nested objects) as (key path, value); InvalidQuery
    naming `metadata` otherwise."""
    key, sep, value = text.partition("=")
    path = key.strip().split(".")
    if not sep or not all(path):
        raise InvalidQuery("metadata", f"{text!r} is not KEY=VALUE (e.g. branch=main)")
    return path, value


async def dataset_runs(conn: asyncpg.Connection, dataset_id: str, *, limit: int | None = None,
                       offset: int = 0, metadata: Sequence[tuple[list[str], str]] = (),
                       before: datetime | None = None) -> dict:
    """The runs of a dataset, newest first, each with its full run summary; with `metadata`,
    those whose metadata has each (key path, value) — as text; an array value matches by any
    element —, with `before`, those started before it."""
    conditions = ["dataset_id = $1", "($2::timestamptz IS NULL OR started_at < $2)"]
    params: list = [dataset_id, before]
    for path, value in metadata:
        params += [path, value]
        conditions.append(group_condition("metadata", f"${len(params) - 1}", f"${len(params)}"))
    where = " AND ".join(conditions)
    n = len(params)
    rows = await conn.fetch(
        f"SELECT id, count(*) OVER () AS total FROM runs WHERE {where}"
        f" ORDER BY started_at DESC, id DESC LIMIT ${n + 1} OFFSET ${n + 2}",
        *params, limit, offset)
    total = rows[0]["total"] if rows else await conn.fetchval(
        f"SELECT count(*) FROM runs WHERE {where}", *params)
    summaries = await run_summaries(conn, [r["id"] for r in rows])
    return {"total": total, "runs": [summaries[r["id"]] for r in rows]}


async def dataset_items(conn: asyncpg.Connection, dataset_id: str, *, limit: int | None = None,
                        offset: int = 0) -> dict:
    """The items of a dataset in id order."""
    # Counted apart: a window count would carry every item's input along to the page.
    total = await conn.fetchval("SELECT count(*) FROM dataset_items WHERE dataset_id = $1",
                                dataset_id)
    rows = await conn.fetch(
        "SELECT id, input, expected_output, metadata, updated_at FROM dataset_items"
        " WHERE dataset_id = $1 ORDER BY id LIMIT $2 OFFSET $3", dataset_id, limit, offset)
    return {"total": total, "items": [dict(r) for r in rows]}
