"""A dataset's baseline run: the run its other runs are compared with by default, and when it was
chosen (the latest choice stands, whatever the order the events arrive in).

Revision ID: 0013
Revises: 0012
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE datasets ADD COLUMN baseline_run_id text,"
               " ADD COLUMN baseline_set_at timestamptz")


def downgrade() -> None:
    op.execute("ALTER TABLE datasets DROP COLUMN baseline_run_id, DROP COLUMN baseline_set_at")
