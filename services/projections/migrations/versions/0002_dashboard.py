"""SQL views for dashboards (owned by the comparison work)

Revision ID: 0002
Revises: 0001
"""

from alembic import op

from services.migrations_env import execute_script

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script(op, "SELECT 1")


def downgrade() -> None:
    pass
