"""Evaluation failures by (run item, score name): every batch of scores deletes the failures its
scores supersede by that pair, which without an index is a scan of all failures per batch.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX evaluation_failures_item_name"
               " ON evaluation_failures (run_item_id, name)")


def downgrade() -> None:
    op.execute("DROP INDEX evaluation_failures_item_name")
