"""Deleted datasets: one row per DatasetDeleted, which the catalog handlers consult so that the
dataset's events arriving afterwards leave no rows behind (its runs have tombstones of their own,
docs/adr/0009).

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""CREATE TABLE deleted_datasets (
        dataset_id text PRIMARY KEY,
        deleted_at timestamptz NOT NULL,
        event_id   text NOT NULL
    )""")


def downgrade() -> None:
    op.execute("DROP TABLE deleted_datasets")
