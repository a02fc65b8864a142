"""Read queries over the read models: what the query API answers, one function per question."""

from __future__ import annotations

import asyncpg

PASS_THRESHOLD = 0.5

RUN_SUMMARY_SQL = """
WITH items AS (
    SELECT count(*) FILTER (WHERE status = 'succeeded') AS completed_items,
           count(*) FILTER (WHERE status = 'failed')    AS failed_items,
           coalesce(sum(cost), 0)                       AS total_cost,
           coalesce(sum(coalesce(input_tokens, 0) + coalesce(output_tokens, 0)), 0)
                                                        AS total_tokens
    FROM run_items WHERE run_id = $1
), by_name AS (
    SELECT name, avg(value) AS average,
           avg((value >= $2)::int)::float8 AS pass_rate, count(*) AS count
    FROM scores WHERE run_id = $1 GROUP BY name
), overall AS (
    SELECT count(DISTINCT run_item_id) AS items_with_scores,
           avg((value >= $2)::int)::float8 AS pass_rate
    FROM scores WHERE run_id = $1
)
SELECT r.id, r.dataset_id, r.name, r.metadata, r.started_at, r.evaluators, r.total_items,
       i.completed_items, i.failed_items, i.total_cost, i.total_tokens,
       o.items_with_scores, o.pass_rate,
       coalesce((SELECT jsonb_object_agg(name, jsonb_build_object(
                    'average', average, 'pass_rate', pass_rate, 'count', count))
                 FROM by_name), '{}'::jsonb) AS scores,
       (SELECT count(*) FROM evaluation_failures WHERE run_id = $1) AS evaluation_failures
FROM runs r, items i, overall o
WHERE r.id = $1
"""


async def run_summary(conn: asyncpg.Connection, run_id: str) -> dict | None:
    row = await conn.fetchrow(RUN_SUMMARY_SQL, run_id, PASS_THRESHOLD)
    if row is None:
        return None
    out = dict(row)
    out["items_without_scores"] = max(out["total_items"] - out["items_with_scores"], 0)
    return out


RUN_RESULTS_SQL = """
SELECT r.run_item_id, r.dataset_item_id, r.trace_id, r.status, r.input, r.expected_output,
       r.output, r.error, r.latency_ms, r.input_tokens, r.output_tokens, r.cost, r.completed_at,
       coalesce(s.scores, '[]'::jsonb) AS scores,
       coalesce(f.failures, '[]'::jsonb) AS evaluation_failures
FROM run_items r
LEFT JOIN LATERAL (
    SELECT jsonb_agg(jsonb_build_object(
        'name', name, 'value', value, 'data_type', data_type, 'source', source,
        'string_value', string_value, 'comment', comment, 'created_by', created_by,
        'passed', value >= $2, 'evaluator', evaluator, 'evaluator_version', evaluator_version,
        'spec_hash', spec_hash, 'observed_at', observed_at) ORDER BY name, source) AS scores
    FROM scores WHERE run_item_id = r.run_item_id
) s ON true
LEFT JOIN LATERAL (
    SELECT jsonb_agg(jsonb_build_object('name', name, 'evaluator', evaluator,
        'evaluator_version', evaluator_version, 'reason', reason) ORDER BY name) AS failures
    FROM evaluation_failures WHERE run_item_id = r.run_item_id
) f ON true
WHERE r.run_id = $1
ORDER BY r.dataset_item_id NULLS LAST, r.trace_id
"""


def display_value(score: dict) -> str:
    """As the seed shows it: Pass/Fail for booleans, the label for categories, else 2 decimals."""
    if score["data_type"] == "boolean":
        return "Pass" if score["value"] >= PASS_THRESHOLD else "Fail"
    if score["data_type"] == "categorical" and score.get("string_value"):
        return score["string_value"]
    return f"{score['value']:.2f}"


async def run_results(conn: asyncpg.Connection, run_id: str) -> list[dict]:
    rows = await conn.fetch(RUN_RESULTS_SQL, run_id, PASS_THRESHOLD)
    out = []
    for row in rows:
        item = dict(row)
        for score in item["scores"]:
            score["display_value"] = display_value(score)
        out.append(item)
    return out
