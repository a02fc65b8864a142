"""A score's pass threshold, from its spec's `pass_threshold` (NULL: the default, 0.5).

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE scores ADD COLUMN pass_threshold double precision")


def downgrade() -> None:
    op.execute("ALTER TABLE scores DROP COLUMN pass_threshold")
