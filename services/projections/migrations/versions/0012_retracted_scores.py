"""Verdicts taken back: the latest retraction of each (run item, verdict name), which a verdict
must be newer than to count, whatever the order the two arrive in.

Revision ID: 0012
Revises: 0011
"""

from alembic import op

from services.migrations_env import execute_script

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script(op, """
    CREATE TABLE retracted_scores (
        run_item_id  text NOT NULL,
        name         text NOT NULL,
        score_id     text NOT NULL,
        run_id       text,
        retracted_by text,
        reason       text,
        retracted_at timestamptz NOT NULL,
        event_id     text NOT NULL,
        PRIMARY KEY (run_item_id, name)
    );
    CREATE INDEX retracted_scores_run ON retracted_scores (run_id)
    """)


def downgrade() -> None:
    op.execute("DROP TABLE retracted_scores")
