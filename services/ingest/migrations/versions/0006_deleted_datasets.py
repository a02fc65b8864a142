"""Datasets can be deleted: a deleted dataset keeps its row, marked, so that items, evaluators and
runs naming it are refused with a reason; its items go, and its runs are deleted with it.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE datasets ADD COLUMN deleted_at timestamptz")


def downgrade() -> None:
    op.execute("ALTER TABLE datasets DROP COLUMN deleted_at")
