"""Read models: catalog copies, run items, scores with history, failures, and the applied-event log.

Revision ID: 0001
Revises:
"""

from alembic import op

from services.migrations_env import execute_script

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script(op, """
    -- Every event applied, by CloudEvents id: a redelivered or duplicated event is skipped.
    -- Keyed by event id rather than offset because a development broker restarts empty.
    CREATE TABLE applied_events (
        event_id text PRIMARY KEY
    );
    CREATE TABLE datasets (
        id          text PRIMARY KEY,
        name        text NOT NULL,
        description text,
        evaluators  jsonb NOT NULL,
        created_at  timestamptz NOT NULL,
        evaluators_at timestamptz NOT NULL
    );
    CREATE TABLE dataset_items (
        id              text PRIMARY KEY,
        dataset_id      text NOT NULL,
        input           jsonb,
        expected_output jsonb,
        metadata        jsonb,
        updated_at      timestamptz NOT NULL
    );
    CREATE INDEX dataset_items_dataset ON dataset_items (dataset_id);
    CREATE TABLE runs (
        id          text PRIMARY KEY,
        dataset_id  text NOT NULL,
        name        text NOT NULL,
        evaluators  jsonb NOT NULL,
        metadata    jsonb,
        total_items integer NOT NULL,
        started_at  timestamptz NOT NULL
    );
    CREATE INDEX runs_dataset ON runs (dataset_id, started_at);
    CREATE TABLE run_items (
        run_item_id     text PRIMARY KEY,
        run_id          text,
        dataset_item_id text,
        trace_id        text NOT NULL,
        status          text NOT NULL,
        input           jsonb,
        output          jsonb,
        expected_output jsonb,
        error           text,
        latency_ms      double precision,
        input_tokens    integer,
        output_tokens   integer,
        cost            double precision,
        metadata        jsonb,
        completed_at    timestamptz NOT NULL,
        event_id        text NOT NULL
    );
    CREATE INDEX run_items_run ON run_items (run_id, dataset_item_id);
    CREATE INDEX run_items_trace ON run_items (trace_id);
    CREATE TABLE scores (
        score_id          text PRIMARY KEY,
        run_item_id       text NOT NULL,
        run_id            text,
        dataset_item_id   text,
        trace_id          text,
        name              text NOT NULL,
        source            text NOT NULL,
        value             double precision NOT NULL,
        data_type         text NOT NULL,
        string_value      text,
        comment           text,
        created_by        text,
        evaluator         text,
        evaluator_version text,
        spec_hash         text,
        request_id        text,
        observed_at       timestamptz NOT NULL,
        event_id          text NOT NULL
    );
    CREATE INDEX scores_run ON scores (run_id, name);
    CREATE INDEX scores_run_item ON scores (run_item_id);
    -- Every value a score ever had, one row per ScoreRecorded event.
    CREATE TABLE score_history (
        event_id          text PRIMARY KEY,
        score_id          text NOT NULL,
        value             double precision NOT NULL,
        string_value      text,
        comment           text,
        created_by        text,
        evaluator         text,
        evaluator_version text,
        spec_hash         text,
        request_id        text,
        observed_at       timestamptz NOT NULL
    );
    CREATE INDEX score_history_score ON score_history (score_id, observed_at);
    CREATE TABLE evaluation_failures (
        failure_id        text PRIMARY KEY,
        run_item_id       text NOT NULL,
        run_id            text,
        dataset_item_id   text,
        trace_id          text,
        name              text NOT NULL,
        evaluator         text NOT NULL,
        evaluator_version text,
        spec_hash         text,
        reason            text NOT NULL,
        request_id        text,
        observed_at       timestamptz NOT NULL,
        event_id          text NOT NULL
    );
    CREATE INDEX evaluation_failures_run ON evaluation_failures (run_id);
    """)


def downgrade() -> None:
    op.execute("""DROP TABLE evaluation_failures, score_history, scores, run_items, runs,
                  dataset_items, datasets, applied_events""")
