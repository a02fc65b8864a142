"""The times each dataset item was upserted since it was last removed, so that a run waits for the
traces of exactly the items its dataset held when it started — not for items added since, nor for
items removed since (docs/adr/0011, amended in session 8). A removal prunes the item's earlier
times; an upsert older than the item's removal is not recorded (as its content is not). Items
already projected get their last upsert's time, the one known.

Revision ID: 0014
Revises: 0013
"""

from alembic import op

from services.migrations_env import execute_script

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script(op, """
    CREATE TABLE dataset_item_upserts (
        dataset_id  text NOT NULL,
        item_id     text NOT NULL,
        upserted_at timestamptz NOT NULL,
        PRIMARY KEY (dataset_id, item_id, upserted_at)
    );
    INSERT INTO dataset_item_upserts SELECT dataset_id, id, updated_at FROM dataset_items
    """)


def downgrade() -> None:
    op.execute("DROP TABLE dataset_item_upserts")
