"""A run's figures broken down by a metadata value: per category, difficulty, prompt version ...

`by` names where the value is read: `item.<key>` in the dataset item's metadata (what the test
case is: its category, its tags), `trace.<key>` in the metadata the trace was posted with (how
the agent ran: model, prompt version). A dotted key goes into nested objects
(`item.source.kind`). A run item is counted in the group of its value; when the value is an
array (tags), in the group of each distinct element; with no value (no such key, JSON null, an
empty array) in the group whose value is null.

Each group has the figures of the run summary for its run items: items (completed, failed), cost,
tokens, latency p50/p95, items with scores, overall pass rate, evaluator failures and, per score
name, average, pass rate and count (labels for categorical scores). Only traced items are
counted: an item of the dataset that the run has no trace for is in no group. Comparing runs
(`compare_breakdown`) puts each run's figures of a group side by side, with deltas against the
baseline.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import asyncpg

from services.projections import comparison, views
from services.projections.views import InvalidQuery

MAX_PATH = 8
_KEY = re.compile(r"[^.\s][^.]*")


@dataclass(frozen=True)
class GroupBy:
    source: Literal["item", "trace"]
    path: tuple[str, ...]

    def __str__(self) -> str:
        return ".".join((self.source, *self.path))


def parse_group_by(by: str) -> GroupBy:
    """`item.category` / `trace.model` (dots into nested objects) → GroupBy, or InvalidQuery
    naming `by`."""
    source, _, rest = by.strip().partition(".")
    if source not in ("item", "trace") or not rest:
        raise InvalidQuery("by", "give item.<metadata key> (the dataset item's metadata) or "
                                 f"trace.<metadata key> (the trace's), e.g. item.category; got "
                                 f"{by!r}")
    path = tuple(rest.split("."))
    if any(not _KEY.fullmatch(key) for key in path):
        raise InvalidQuery("by", f"an empty or blank key in {by!r}: keys are separated by single "
                                 "dots")
    if len(path) > MAX_PATH:
        raise InvalidQuery("by", f"at most {MAX_PATH} nested keys")
    return GroupBy(source, path)  # type: ignore[arg-type]


# Where the value is read, per source: the dataset item's metadata (an item removed from the
# dataset since has none) or the trace's.
_METADATA = {
    "item": ("di.metadata", views.dataset_item_join("ri", "di")),
    "trace": ("ri.metadata", ""),
}

# $1 runs, $2 the key path, $3/$4 limit/offset over the groups (in value order, no value last),
# $5 the default pass threshold. A group is keyed by its value's JSON text (k), '' for no value
# (no JSON text is empty). The count of groups comes from a one-row side, so that a page past
# the end still says how many there are.
_SQL = """
WITH valued AS (
    SELECT ri.run_id, ri.run_item_id, ri.status, ri.cost, ri.latency_ms,
           coalesce(ri.input_tokens, 0) + coalesce(ri.output_tokens, 0) AS tokens,
           nullif({metadata} #> $2::text[], 'null'::jsonb) AS v
    FROM run_items ri {join}
    WHERE ri.run_id = ANY($1::text[])
),
members AS (
    SELECT run_id, run_item_id, status, cost, latency_ms, tokens,
           CASE WHEN v = '[]' THEN '' ELSE coalesce(v::text, '') END AS k
    FROM valued WHERE jsonb_typeof(v) IS DISTINCT FROM 'array' OR v = '[]'
    UNION ALL
    SELECT run_id, run_item_id, status, cost, latency_ms, tokens, e.k
    FROM valued CROSS JOIN LATERAL (
        SELECT DISTINCT coalesce(nullif(e, 'null')::text, '') AS k
        FROM jsonb_array_elements(CASE WHEN jsonb_typeof(v) = 'array' THEN v END) e) e
),
page AS (SELECT k FROM (SELECT DISTINCT k FROM members) d
         ORDER BY k = '', nullif(k, '')::jsonb LIMIT $3 OFFSET $4),
paged AS (SELECT m.* FROM members m JOIN page USING (k)),
scored AS (
    SELECT p.run_id, p.k, p.run_item_id, s.name, s.data_type = 'categorical' AS categorical,
           CASE WHEN s.data_type = 'categorical' THEN s.string_value END AS label, s.value,
           s.value >= coalesce(s.pass_threshold, $5) AS passed
    FROM paged p JOIN scores s ON s.run_item_id = p.run_item_id AND s.run_id = p.run_id
),
per_item AS (
    SELECT run_id, k, count(*) FILTER (WHERE NOT categorical) AS n,
           count(*) FILTER (WHERE passed AND NOT categorical) AS passed
    FROM scored GROUP BY run_id, k, run_item_id
),
names AS (
    SELECT run_id, k, jsonb_object_agg(name, jsonb_build_object(
               'average', average, 'pass_rate', pass_rate, 'count', count)
               || CASE WHEN labels IS NULL THEN '{{}}'::jsonb
                       ELSE jsonb_build_object('labels', labels) END) AS scores
    FROM (SELECT run_id, k, name,
                 sum(total) FILTER (WHERE NOT categorical)
                     / nullif(sum(n) FILTER (WHERE NOT categorical), 0) AS average,
                 sum(passed) FILTER (WHERE NOT categorical)::float8
                     / nullif(sum(n) FILTER (WHERE NOT categorical), 0) AS pass_rate,
                 sum(n)::bigint AS count,
                 jsonb_object_agg(label, n) FILTER (WHERE categorical AND label IS NOT NULL)
                     AS labels
          FROM (SELECT run_id, k, name, categorical, label, count(*) AS n, sum(value) AS total,
                       count(*) FILTER (WHERE passed) AS passed
                FROM scored GROUP BY 1, 2, 3, 4, 5) per_label
          GROUP BY run_id, k, name) per_name
    GROUP BY run_id, k
)
SELECT t.total, x.*
FROM (SELECT count(DISTINCT k) AS total FROM members) t
LEFT JOIN (
    SELECT c.run_id, c.k, nullif(c.k, '')::jsonb AS value, c.items,
           c.completed_items, c.failed_items, c.total_cost, c.total_tokens, c.latency_p50_ms,
           c.latency_p95_ms, coalesce(s.items_with_scores, 0) AS items_with_scores,
           s.pass_rate, coalesce(f.evaluation_failures, 0) AS evaluation_failures,
           coalesce(n.scores, '{{}}'::jsonb) AS scores
    FROM (SELECT run_id, k, count(*) AS items,
                 count(*) FILTER (WHERE status = 'succeeded') AS completed_items,
                 count(*) FILTER (WHERE status = 'failed') AS failed_items,
                 coalesce(sum(cost), 0)::float8 AS total_cost,
                 sum(tokens)::bigint AS total_tokens,
                 percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS latency_p50_ms,
                 percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS latency_p95_ms
          FROM paged GROUP BY run_id, k) c
    LEFT JOIN (SELECT run_id, k, count(*) AS items_with_scores,
                      sum(passed)::float8 / nullif(sum(n), 0) AS pass_rate
               FROM per_item GROUP BY run_id, k) s USING (run_id, k)
    LEFT JOIN (SELECT p.run_id, p.k, count(*) AS evaluation_failures
               FROM paged p JOIN evaluation_failures f ON f.run_item_id = p.run_item_id
               GROUP BY p.run_id, p.k) f USING (run_id, k)
    LEFT JOIN names n USING (run_id, k)
) x ON true
ORDER BY x.k = '', x.value, x.run_id
"""


def _sql(by: GroupBy) -> str:
    metadata, join = _METADATA[by.source]
    return _SQL.format(metadata=metadata, join=join)


_FIGURES = ("items", "completed_items", "failed_items", "total_cost", "total_tokens",
            "latency_p50_ms", "latency_p95_ms", "items_with_scores", "pass_rate",
            "evaluation_failures", "scores")


async def _groups(conn: asyncpg.Connection, run_ids: Sequence[str], by: GroupBy, limit: int,
                  offset: int) -> tuple[int, list[tuple[object, dict[str, dict]]]]:
    """How many groups the runs' items fall into, and a page of them in value order: (value,
    run id → that run's figures in the group)."""
    rows = await conn.fetch(_sql(by), list(run_ids), list(by.path), limit, offset,
                            views.PASS_THRESHOLD)
    groups: dict[str, tuple[object, dict[str, dict]]] = {}
    for row in rows:
        if row["run_id"] is None:  # the count's row when the page is empty
            continue
        groups.setdefault(row["k"], (row["value"], {}))[1][row["run_id"]] = {
            f: row[f] for f in _FIGURES}
    return rows[0]["total"], list(groups.values())


def _page(total: int, limit: int, offset: int) -> dict:
    return {"total": total, "limit": limit, "offset": offset,
            "next_offset": offset + limit if offset + limit < total else None}


async def run_breakdown(conn: asyncpg.Connection, run_id: str, by: GroupBy, *, limit: int = 100,
                        offset: int = 0) -> dict:
    """One run's figures per group (a page of groups, in value order)."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await comparison.read_tuned(conn)
        total, groups = await _groups(conn, [run_id], by, limit, offset)
    return {"run_id": run_id, "by": str(by), **_page(total, limit, offset),
            "groups": [{"value": value, **runs[run_id]} for value, runs in groups]}


_NO_FIGURES = {"items": 0, "completed_items": 0, "failed_items": 0, "total_cost": 0.0,
               "total_tokens": 0, "latency_p50_ms": None, "latency_p95_ms": None,
               "items_with_scores": 0, "pass_rate": None, "evaluation_failures": 0,
               "scores": {}}


def _delta(value: float | None, base: float | None) -> float | None:
    return None if value is None or base is None else value - base


def _against(own: dict, base: dict | None, is_baseline: bool) -> dict:
    """A run's figures in a group with the deltas against the baseline's there (null for the
    baseline itself and where a side has no value)."""
    def delta(of: str, own_value, base_value) -> dict:
        return {f"delta_{of}": None if is_baseline else _delta(own_value, base_value)}

    base = base or _NO_FIGURES
    scores = {}
    for name, figures in own["scores"].items():
        other = base["scores"].get(name, {})
        scores[name] = {**figures,
                        **delta("average", figures.get("average"), other.get("average")),
                        **delta("pass_rate", figures.get("pass_rate"), other.get("pass_rate"))}
    return {**own, "scores": scores, **delta("pass_rate", own["pass_rate"], base["pass_rate"])}


async def compare_breakdown(pool: asyncpg.Pool, run_ids: Sequence[str], baseline: str | None,
                            by: GroupBy, *, limit: int = 100, offset: int = 0) -> dict:
    """Runs of one dataset side by side per group, each with its deltas against `baseline`: which
    category got better or worse. A run with no item in a group shows zero items there."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                         readonly=True):
        await comparison.read_tuned(conn)
        dataset_id, run_ids, baseline = await comparison.resolve(conn, run_ids, baseline)
        total, groups = await _groups(conn, run_ids, by, limit, offset)
    out = []
    for value, runs in groups:
        base = runs.get(baseline)
        out.append({"value": value, "runs": [
            {"run_id": r, "is_baseline": r == baseline,
             **_against(runs.get(r, _NO_FIGURES), base, r == baseline)} for r in run_ids]})
    return {"dataset_id": dataset_id, "baseline": baseline, "run_ids": list(run_ids),
            "by": str(by), **_page(total, limit, offset), "groups": out}
