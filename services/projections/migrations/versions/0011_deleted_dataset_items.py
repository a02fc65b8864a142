"""Items removed from a dataset: the latest removal of each, which an upsert of the item must be
newer than to bring it back, whatever the order the two arrive in.

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""CREATE TABLE deleted_dataset_items (
        dataset_id text NOT NULL,
        item_id    text NOT NULL,
        deleted_at timestamptz NOT NULL,
        PRIMARY KEY (dataset_id, item_id)
    )""")


def downgrade() -> None:
    op.execute("DROP TABLE deleted_dataset_items")
