"""Deleted runs: one row per RunDeleted, which every handler consults so that a deleted run's
events arriving afterwards (traces and scores in flight, or anything in a rebuild's order) leave
no rows behind; the outcome stays independent of arrival order.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""CREATE TABLE deleted_runs (
        run_id     text PRIMARY KEY,
        deleted_at timestamptz NOT NULL,
        event_id   text NOT NULL
    )""")


def downgrade() -> None:
    op.execute("DROP TABLE deleted_runs")
