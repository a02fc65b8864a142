"""Production traces over time: the traces posted outside any run (`run_id IS NULL`), and their
scores, per minute, hour or day (GET /v1/monitoring, `evalstream monitor`).

Each bucket — its start aligned to the interval in UTC; a bucket without a trace is left out —
and the whole window (`totals`) have the figures of a run summary for the traces completed in
it: traces, succeeded, failed, scored traces, evaluator failures, the overall pass rate (the
share of boolean and numeric scores that pass) and per score name average, pass rate, count and
the labels of categorical ones. A score counts in the bucket of its trace's completion. The
scores are read through TRACE_SCORES_TEMPLATE, which the dashboard view `trace_scores` is too,
and the per-name figures are the run summary's SQL (views.SCORE_FIGURES), so the API, the
dashboards and the run summaries cannot disagree on what passes.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Literal

import asyncpg

from services.projections.views import (
    SCORE_FIGURES,
    SCORES_JSON,
    TRACE_SCORES_TEMPLATE,
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
    """$1/$2 the window, $3 the interval; further parameters returned in order. Each trace (and
    score) is counted twice: in its bucket, and in the totals' (bucket NULL)."""
    params: list = []

    def param(value: object) -> str:
        params.append(value)
        return f"${len(params) + 3}"

    in_group = in_group_scores = ""
    if group is not None:
        _, path, text = group
        path_param, text_param = param(path), param(text)
        # (braces doubled: the statement goes through sql_template's str.format)
        in_group, in_group_scores = (
            " AND " + group_condition(column, path_param, text_param).replace(
                "{", "{{").replace("}", "}}")
            for column in ("r.metadata", "s.trace_metadata"))
    name = param(score) if score is not None else None
    score_named = f" AND s.score_name = {name}" if name else ""
    failure_named = f" AND f.name = {name}" if name else ""
    return sql_template("""
WITH traces AS (
    SELECT r.run_item_id, r.status, b.bucket
    FROM {rm}run_items r
    CROSS JOIN LATERAL (VALUES (date_trunc($3, r.completed_at, 'UTC')), (NULL)) b(bucket)
    WHERE r.run_id IS NULL AND r.completed_at >= $1 AND r.completed_at < $2""" + in_group + """
), scored AS (
    SELECT b.bucket, s.run_item_id, s.score_name, s.data_type = 'categorical' AS categorical,
           s.label, s.value, s.passed
    FROM (""" + TRACE_SCORES_TEMPLATE + """) s
    CROSS JOIN LATERAL (VALUES (date_trunc($3, s.completed_at, 'UTC')), (NULL)) b(bucket)
    WHERE s.completed_at >= $1 AND s.completed_at < $2""" + in_group_scores + score_named + """
), counted AS (
    SELECT bucket, count(*) AS traces, count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE status = 'failed') AS failed
    FROM traces GROUP BY bucket
), overall AS (
    SELECT bucket, count(DISTINCT run_item_id) AS scored_traces,
           count(*) FILTER (WHERE passed)::float8 / nullif(count(passed), 0) AS pass_rate
    FROM scored GROUP BY bucket
), failures AS (
    SELECT t.bucket, count(*) AS evaluation_failures
    FROM traces t JOIN {rm}evaluation_failures f ON f.run_item_id = t.run_item_id
    WHERE f.run_id IS NULL""" + failure_named + """
    GROUP BY t.bucket
), per_name AS (
    SELECT bucket, """ + SCORES_JSON + """ AS scores
    FROM (SELECT bucket, score_name, """ + SCORE_FIGURES + """
          FROM (SELECT bucket, score_name, categorical, label, count(*) AS n,
                       sum(value) AS total, count(*) FILTER (WHERE passed) AS passed
                FROM scored GROUP BY 1, 2, 3, 4) g
          GROUP BY bucket, score_name) f
    GROUP BY bucket
)
SELECT c.bucket, c.traces, c.succeeded, c.failed, coalesce(o.scored_traces, 0) AS scored_traces,
       coalesce(x.evaluation_failures, 0) AS evaluation_failures, o.pass_rate,
       coalesce(n.scores, '{{}}'::jsonb) AS scores
FROM counted c
LEFT JOIN overall o ON o.bucket IS NOT DISTINCT FROM c.bucket
LEFT JOIN failures x ON x.bucket IS NOT DISTINCT FROM c.bucket
LEFT JOIN per_name n ON n.bucket IS NOT DISTINCT FROM c.bucket
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
            "buckets": [{"start": r["bucket"], **_figures(r)} for r in rows
                        if r["bucket"] is not None],
            "totals": _figures(totals)}
