"""Read queries of rescoring: the progress of a score request, and the history of a run item's
scores with the evaluator version that produced each value."""

from __future__ import annotations

import asyncpg

from schemas.common import run_item_key

PROGRESS_SQL = """
SELECT coalesce(q.request_id, $1) AS request_id, q.origin, q.run_id, q.requested, q.runs,
       q.evaluators, q.filters, q.interrupted, q.requested_at,
       c.completed, c.scored, c.failed, c.unscored, c.scores_recorded, c.evaluation_failures,
       -- Cases of runs deleted since (a request over several runs keeps its row): never to be
       -- counted, so no longer waited for.
       (SELECT coalesce(sum(r.value::integer), 0) FROM jsonb_each_text(q.runs) AS r
        JOIN deleted_runs d ON d.run_id = r.key) AS withdrawn
FROM (SELECT count(*) AS completed,
             count(*) FILTER (WHERE scored > 0 AND failed = 0) AS scored,
             count(*) FILTER (WHERE failed > 0) AS failed,
             count(*) FILTER (WHERE scored = 0 AND failed = 0) AS unscored,
             coalesce(sum(scored), 0) AS scores_recorded,
             coalesce(sum(failed), 0) AS evaluation_failures
      FROM score_request_cases WHERE request_id = $1) c
LEFT JOIN score_requests q ON q.request_id = $1
"""


async def score_request_progress(conn: asyncpg.Connection, request_id: str) -> dict | None:
    """How far a request is: `requested` cases, `completed` ones (split into `scored`, `failed`
    — an evaluator failed — and `unscored` — nothing to score, e.g. no expected output),
    `withdrawn` (requested of runs deleted since: their cases are not counted), `done`.

    Until the request's own event has arrived, `requested` is null and `done` false."""
    row = await conn.fetchrow(PROGRESS_SQL, request_id)
    if row["origin"] is None and row["completed"] == 0:
        return None
    out = dict(row)
    out["interrupted"] = bool(out["interrupted"])
    out["done"] = (out["requested"] is not None
                   and out["completed"] >= out["requested"] - out["withdrawn"])
    return out


# Each score of the run item, and each verdict taken back since (no current value, its
# retraction instead), with every value it has had: score_history keeps the earlier values, the
# current one is the score's own row.
HISTORY_SQL = """
WITH entries AS (
    SELECT s.score_id, s.name, s.source, s.data_type, s.value, s.string_value, s.comment,
           s.created_by, s.evaluator, s.evaluator_version, s.spec_hash, s.request_id,
           s.observed_at, s.event_id, NULL::timestamptz AS retracted_at,
           NULL::text AS retracted_by
    FROM scores s WHERE s.run_item_id = $1
    UNION ALL
    SELECT t.score_id, t.name, 'manual', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           NULL, NULL, t.retracted_at, t.retracted_by
    FROM retracted_scores t
    WHERE t.run_item_id = $1
      AND NOT EXISTS (SELECT 1 FROM scores s
                      WHERE (s.run_item_id, s.name, s.source) = (t.run_item_id, t.name, 'manual'))
)
SELECT e.score_id, e.name, e.source, e.data_type, e.value, e.string_value, e.comment,
       e.created_by, e.evaluator, e.evaluator_version, e.spec_hash, e.request_id, e.observed_at,
       e.retracted_at, e.retracted_by,
       (SELECT jsonb_agg(jsonb_build_object(
                    'value', h.value, 'string_value', h.string_value, 'comment', h.comment,
                    'created_by', h.created_by, 'evaluator', h.evaluator,
                    'evaluator_version', h.evaluator_version, 'spec_hash', h.spec_hash,
                    'request_id', h.request_id, 'observed_at', h.observed_at)
                    ORDER BY h.observed_at, h.event_id)
        FROM (SELECT value, string_value, comment, created_by, evaluator, evaluator_version,
                     spec_hash, request_id, observed_at, event_id
              FROM score_history WHERE score_id = e.score_id
              UNION ALL
              SELECT e.value, e.string_value, e.comment, e.created_by, e.evaluator,
                     e.evaluator_version, e.spec_hash, e.request_id, e.observed_at, e.event_id
              WHERE e.event_id IS NOT NULL) h) AS history
FROM entries e
ORDER BY e.name, e.source
"""


async def run_item_score_history(conn: asyncpg.Connection, run_id: str,
                                 dataset_item_id: str) -> dict | None:
    """Every score of one run item, current value first, then each value it has had (oldest
    first) with the evaluator, version and spec hash that produced it, and each verdict taken
    back (`retracted_at`, no current value); None if the run has no such item."""
    run_item_id = run_item_key(run_id, dataset_item_id, None)
    rows = await conn.fetch(HISTORY_SQL, run_item_id)
    if not rows and await conn.fetchval(
            "SELECT 1 FROM run_items WHERE run_item_id = $1", run_item_id) is None:
        return None
    return {"run_id": run_id, "dataset_item_id": dataset_item_id, "run_item_id": run_item_id,
            "scores": [dict(r) for r in rows]}
