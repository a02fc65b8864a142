"""Run items as ingest published them (what a rescoring or a manual score refers to), and the
score requests made over HTTP (docs/adr/0005).

Revision ID: 0002
Revises: 0001
"""

from alembic import op

from services.migrations_env import execute_script

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script(op, """
    -- The latest trace of every run item, written once the broker has acknowledged it:
    -- POST /v1/runs/{id}/evaluate rebuilds self-contained score requests from these rows, and
    -- POST /v1/scores resolves a dataset item or trace id to its run item.
    CREATE TABLE run_items (
        run_item_id     text PRIMARY KEY,
        run_id          text NOT NULL REFERENCES runs (id),
        dataset_id      text,
        dataset_item_id text,
        trace_id        text NOT NULL,
        status          text NOT NULL,
        input           jsonb,
        output          jsonb,
        expected_output jsonb,
        completed_at    timestamptz NOT NULL,
        event_id        text NOT NULL
    );
    -- A dataset item's row is found by its key (uuid5 of run and item); this index serves
    -- a run's items and a trace's lookup.
    CREATE INDEX run_items_run_trace ON run_items (run_id, trace_id);
    CREATE TABLE score_requests (
        id           text PRIMARY KEY,
        run_id       text NOT NULL REFERENCES runs (id),
        requested    integer NOT NULL,
        evaluators   jsonb NOT NULL,
        requested_at timestamptz NOT NULL
    );
    CREATE INDEX score_requests_run ON score_requests (run_id, requested_at);
    """)


def downgrade() -> None:
    op.execute("DROP TABLE score_requests, run_items")
