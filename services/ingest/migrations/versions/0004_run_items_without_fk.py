"""Run items without a foreign key to runs: ingest checks the run of every trace before it
publishes it, and the key's trigger (one lookup and row lock per trace, on the same run row from
every concurrent POST) was the largest share of Postgres' work on the trace path.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE run_items DROP CONSTRAINT IF EXISTS run_items_run_id_fkey")


def downgrade() -> None:
    op.execute("ALTER TABLE run_items ADD CONSTRAINT run_items_run_id_fkey"
               " FOREIGN KEY (run_id) REFERENCES runs (id)")
