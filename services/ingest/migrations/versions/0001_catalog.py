"""The catalog: datasets, items, runs, and the transactional outbox of their events.

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
    CREATE TABLE datasets (
        id          text PRIMARY KEY,
        name        text NOT NULL,
        description text,
        evaluators  jsonb NOT NULL,
        created_at  timestamptz NOT NULL
    );
    CREATE TABLE dataset_items (
        id              text PRIMARY KEY,
        dataset_id      text NOT NULL REFERENCES datasets (id),
        input           jsonb,
        expected_output jsonb,
        metadata        jsonb,
        updated_at      timestamptz NOT NULL
    );
    CREATE INDEX dataset_items_dataset ON dataset_items (dataset_id);
    CREATE TABLE runs (
        id          text PRIMARY KEY,
        dataset_id  text NOT NULL REFERENCES datasets (id),
        name        text NOT NULL,
        evaluators  jsonb NOT NULL,
        metadata    jsonb,
        total_items integer NOT NULL,
        started_at  timestamptz NOT NULL
    );
    -- Events wait here, written in the same transaction as the rows they describe,
    -- until the relay has published them.
    CREATE TABLE outbox (
        seq        bigserial PRIMARY KEY,
        topic      text NOT NULL,
        key        text,
        headers    jsonb NOT NULL,
        body       bytea NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    );
    """)


def downgrade() -> None:
    op.execute("DROP TABLE outbox, runs, dataset_items, datasets")
