"""Dataset item ids are unique within their dataset, not across datasets: teams reuse ids such as
`q1` in every dataset.

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
    execute_script(op, """
    ALTER TABLE dataset_items DROP CONSTRAINT dataset_items_pkey;
    ALTER TABLE dataset_items ADD PRIMARY KEY (dataset_id, id);
    DROP INDEX dataset_items_dataset;
    CREATE INDEX dataset_items_id ON dataset_items (id)
    """)


def downgrade() -> None:
    execute_script(op, """
    DROP INDEX dataset_items_id;
    CREATE INDEX dataset_items_dataset ON dataset_items (dataset_id);
    ALTER TABLE dataset_items DROP CONSTRAINT dataset_items_pkey;
    ALTER TABLE dataset_items ADD PRIMARY KEY (id)
    """)
