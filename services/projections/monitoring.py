"""Production traces over time: the traces posted outside any run (`run_id IS NULL`), and their
scores, per minute, hour or day (GET /v1/monitoring, `evalstream monitor`).

Each bucket — its start aligned to the interval in UTC; a bucket without a trace is left out —
and the whole window (`totals`) have the figures of a run summary for the traces completed in
it: traces, succeeded, failed, scored traces, evaluator failures, the overall pass rate (the
share of boolean and numeric scores that pass) and per score name average, pass rate, count and
the labels of categorical ones. A score counts in the bucket of its trace's completion. The
scores are read with the columns of the dashboard view `trace_scores` (views.TRACE_SCORE_COLUMNS,
which TRACE_SCORES_TEMPLATE is made of), and the per-name figures are the run summary's SQL
(views.SCORE_FIGURES), so the API, the dashboards and the run summaries cannot disagree on what
passes.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Literal

import asyncpg

from services.projections.retention import watermark
from services.projections.views import (
    SCORE_FIGURES,
    SCORES_JSON,
    TRACE_SCORE_COLUMNS,
    Group,
    InvalidQuery,
    group_condition,
    sql_template,
)

Interval = Literal["minute", "hour", "day"]
STEPS: dict[str, timedelta] = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1),
                               "day": timedelta(days=1)}
MAX_BUCKETS = 1000
DEFAULT_WINDOW = timedelta(hours=24)


def utc(at: datetime) -> datetime:
    """A time in UTC; one without a zone is taken as UTC."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def bucket_start(at: datetime, interval: str) -> datetime:
    """The start of the bucket `at` falls in, as Postgres's date_trunc(interval, at, 'UTC')."""
    at = utc(at)
    if interval == "minute":
        return at.replace(second=0, microsecond=0)
    if interval == "hour":
        return at.replace(minute=0, second=0, microsecond=0)
    return at.replace(hour=0, minute=0, second=0, microsecond=0)


def bucket_count(since: datetime, until: datetime, interval: str) -> int:
    """How many buckets of `interval` the window [since, until) touches."""
    return math.ceil((utc(until) - bucket_start(since, interval)) / STEPS[interval])


def window(since: datetime | None, until: datetime | None, interval: str,
           now: datetime | None = None) -> tuple[datetime, datetime]:
    """The window asked for, in UTC: until defaults to now, since to until - 24 h; InvalidQuery
    naming `since` when it is not before until, `interval` past MAX_BUCKETS buckets."""
    until = utc(until) if until is not None else utc(now or datetime.now(UTC))
    since = utc(since) if since is not None else until - DEFAULT_WINDOW
    if since >= until:
        raise InvalidQuery("since", f"since ({since.isoformat()}) must be before until "
                                    f"({until.isoformat()})")
    if (n := bucket_count(since, until, interval)) > MAX_BUCKETS:
        raise InvalidQuery("interval", f"{n:,} buckets of a {interval} from {since.isoformat()} "
                                       f"to {until.isoformat()}; at most {MAX_BUCKETS:,}: give a "
                                       "longer interval or a shorter window")
    return since, until


def _sql(score: str | None, group: Group | None) -> tuple[str, list]:
    """$1/$2 the window, $3 the interval; further parameters returned in order. One row per
    bucket, and the totals' (bucket NULL) first.

    The window's traces (the partial index on their completion time finds them) are counted,
    joined with their evaluator failures, and read with their scores, looked up trace by trace
    by the scores' primary key: the time taken grows with the window, not with the production
    scores ever recorded, and the plan is the same whether the planner knows the window or not
    (a cached generic plan). The scores are grouped per bucket and (name, label) in a hash
    aggregate, each row once (no copy for the totals); a trace without a score (of that name)
    is one row of its own there (score_name NULL), which gives scored_traces without counting
    distinct traces. The totals are summed from those groups, and the per-name figures and the
    overall pass rate derive from them (an average's float sum may differ from one over the
    rows in the last bits, as the rows' order makes it anyway)."""
    params: list = []

    def param(value: object) -> str:
        params.append(value)
        return f"${len(params) + 3}"

    in_group = ""
    if group is not None:
        _, path, text = group
        path_param, text_param = param(path), param(text)
        # (braces doubled: the statement goes through sql_template's str.format)
        in_group = " AND " + group_condition("r.metadata", path_param, text_param).replace(
            "{", "{{").replace("}", "}}")
    name = param(score) if score is not None else None
    score_named = f" AND s.name = {name}" if name else ""
    failure_named = f" AND f.name = {name}" if name else ""
    return sql_template("""
WITH traces AS NOT MATERIALIZED (
    -- OFFSET 0 plans this apart: the planner takes the buckets' number for its default (200),
    -- not for completed_at's distinct values (a sort of every score where a hash aggregate
    -- does), and still knows the statistics of run_item_id.
    SELECT r.run_item_id, r.status, date_trunc($3, r.completed_at, 'UTC') AS bucket
    FROM {rm}run_items r
    WHERE r.run_id IS NULL AND r.completed_at >= $1 AND r.completed_at < $2""" + in_group + """
    OFFSET 0
), counted AS (
    SELECT bucket, count(*) AS traces, count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE status = 'failed') AS failed
    FROM traces GROUP BY GROUPING SETS ((bucket), ())
), failures AS (
    SELECT t.bucket, count(*) AS evaluation_failures
    FROM traces t JOIN {rm}evaluation_failures f ON f.run_item_id = t.run_item_id
    WHERE f.run_id IS NULL""" + failure_named + """
    GROUP BY GROUPING SETS ((t.bucket), ())
), per_bucket AS (
    SELECT t.bucket, s.score_name, s.categorical, s.label, count(*) AS n,
           sum(s.value) AS total, count(*) FILTER (WHERE s.passed) AS passed
    FROM traces t
    LEFT JOIN LATERAL (
        -- OFFSET 0: by the primary key, trace by trace, never a scan of every production score
        SELECT s.data_type = 'categorical' AS categorical, """ + TRACE_SCORE_COLUMNS + """
        FROM {rm}scores s
        WHERE s.run_item_id = t.run_item_id AND s.run_id IS NULL""" + score_named + """
        OFFSET 0) s ON true
    GROUP BY 1, 2, 3, 4
), g AS (
    SELECT bucket, score_name, categorical, label, sum(n)::bigint AS n, sum(total) AS total,
           sum(passed)::bigint AS passed
    FROM per_bucket
    GROUP BY GROUPING SETS ((bucket, score_name, categorical, label),
                            (score_name, categorical, label))
), scored AS (
    SELECT bucket, sum(f.count) FILTER (WHERE score_name IS NULL)::bigint AS unscored,
           sum(f.judged_passed)::float8 / nullif(sum(f.judged), 0) AS pass_rate,
           """ + SCORES_JSON + """ FILTER (WHERE f.score_name IS NOT NULL) AS scores
    FROM (SELECT bucket, score_name, """ + SCORE_FIGURES + """,
                 sum(passed) FILTER (WHERE NOT categorical) AS judged_passed,
                 sum(n) FILTER (WHERE NOT categorical) AS judged
          FROM g GROUP BY bucket, score_name) f
    GROUP BY bucket
)
-- (-infinity stands for the totals' bucket, NULL, so that the joins hash)
SELECT c.bucket, c.traces, c.succeeded, c.failed,
       c.traces - coalesce(o.unscored, 0) AS scored_traces,
       coalesce(x.evaluation_failures, 0) AS evaluation_failures, o.pass_rate,
       coalesce(o.scores, '{{}}'::jsonb) AS scores
FROM counted c
LEFT JOIN scored o ON coalesce(o.bucket, '-infinity') = coalesce(c.bucket, '-infinity')
LEFT JOIN failures x ON coalesce(x.bucket, '-infinity') = coalesce(c.bucket, '-infinity')
ORDER BY c.bucket NULLS FIRST
"""), params


def _figures(row: asyncpg.Record | None) -> dict:
    if row is None:  # no trace in the window
        return {"traces": 0, "succeeded": 0, "failed": 0, "scored_traces": 0,
                "evaluation_failures": 0, "pass_rate": None, "scores": {}}
    return {k: row[k] for k in ("traces", "succeeded", "failed", "scored_traces",
                                "evaluation_failures", "pass_rate", "scores")}


async def monitoring(conn: asyncpg.Connection, *, since: datetime | None = None,
                     until: datetime | None = None, interval: Interval = "hour",
                     score: str | None = None, group: Group | None = None,
                     now: datetime | None = None) -> dict:
    """The production traces' figures per bucket of `interval` over [since, until) and over the
    whole window (`totals`); `score` counts only the scores (and evaluator failures) of that
    name, `group` only the traces of one value of a trace metadata key (as /results takes it).
    InvalidQuery naming the parameter at fault."""
    if interval not in STEPS:
        raise InvalidQuery("interval", f"unknown interval {interval!r}; use one of "
                                       f"{', '.join(STEPS)}")
    if group is not None and group[0] != "trace":
        raise InvalidQuery("by", "traces outside runs have no dataset item: give "
                                 "trace.<metadata key>")
    since, until = window(since, until, interval, now)
    sql, params = _sql(score, group)
    rows = await conn.fetch(sql, since, until, interval, *params)
    totals = rows[0] if rows and rows[0]["bucket"] is None else None
    return {"since": since, "until": until, "interval": interval, "score": score,
            "retained_since": await watermark(conn),
            "buckets": [{"start": r["bucket"], **_figures(r)} for r in rows
                        if r["bucket"] is not None],
            "totals": _figures(totals)}
