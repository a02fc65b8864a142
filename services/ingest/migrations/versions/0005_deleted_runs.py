"""Runs can be deleted: a deleted run keeps its row, marked, so that traces, verdicts and
rescorings naming it are refused with a reason rather than as unknown; its run items go.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE runs ADD COLUMN deleted_at timestamptz")


def downgrade() -> None:
    op.execute("ALTER TABLE runs DROP COLUMN deleted_at")
