"""Score request progress: one row per request (from ScoreRequestsIssued) and one per requested
case (from ScoringCompleted), so `done` is a count, never a guess.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

from services.migrations_env import execute_script

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script(op, """
    CREATE TABLE score_requests (
        request_id   text PRIMARY KEY,
        origin       text NOT NULL,
        run_id       text,
        requested    integer NOT NULL,
        runs         jsonb,
        evaluators   jsonb,
        filters      jsonb,
        interrupted  boolean NOT NULL,
        requested_at timestamptz NOT NULL,
        event_id     text NOT NULL
    );
    CREATE INDEX score_requests_run ON score_requests (run_id, requested_at);
    -- One row per case the evaluator has handled, whether it yielded scores or not.
    CREATE TABLE score_request_cases (
        request_id  text NOT NULL,
        run_item_id text NOT NULL,
        run_id      text,
        trace_id    text,
        scored      integer NOT NULL,
        failed      integer NOT NULL,
        observed_at timestamptz NOT NULL,
        event_id    text NOT NULL,
        PRIMARY KEY (request_id, run_item_id)
    );
    """)


def downgrade() -> None:
    op.execute("DROP TABLE score_request_cases, score_requests")
