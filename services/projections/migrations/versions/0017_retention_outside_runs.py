"""Retention of the traces posted outside any run (docs/adr/0017): the watermark before which
their rows are gone, and the partial indexes a sweep deletes by.

`retention.outside_runs_before` only moves forward. A row about production traffic (`run_id IS
NULL`) is kept while its own time is at or after it: a trace's completion, a score's, a
failure's or an earlier value's `observed_at`, a retraction's `retracted_at`. `score_history`
has no run id, so its production rows are marked (`outside_runs`) as they are written.

Partial, so that a run's rows (most of each table) pay nothing on the write path.

Revision ID: 0017
Revises: 0016
"""

from alembic import op

from services.migrations_env import execute_script

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script(op, """
    CREATE TABLE retention (
        only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
        outside_runs_before timestamptz NOT NULL DEFAULT '-infinity'
    );
    INSERT INTO retention DEFAULT VALUES;
    ALTER TABLE score_history ADD COLUMN outside_runs boolean;
    UPDATE score_history h SET outside_runs = true FROM scores s
    WHERE s.score_id = h.score_id AND s.run_id IS NULL;
    UPDATE score_history h SET outside_runs = true FROM retracted_scores t
    WHERE t.score_id = h.score_id AND t.run_id IS NULL;
    CREATE INDEX scores_outside_runs ON scores (observed_at) WHERE run_id IS NULL;
    CREATE INDEX score_history_outside_runs ON score_history (observed_at) WHERE outside_runs;
    CREATE INDEX evaluation_failures_outside_runs ON evaluation_failures (observed_at)
        WHERE run_id IS NULL
    """)


def downgrade() -> None:
    execute_script(op, """
    DROP INDEX scores_outside_runs, score_history_outside_runs,
        evaluation_failures_outside_runs;
    ALTER TABLE score_history DROP COLUMN outside_runs;
    DROP TABLE retention
    """)
