"""Score request progress (owned by the rescoring work)

Revision ID: 0003
Revises: 0002
"""

from alembic import op

from services.migrations_env import execute_script

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script(op, "SELECT 1")


def downgrade() -> None:
    pass
