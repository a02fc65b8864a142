"""A score is keyed by what identifies it — run item, name, source — instead of by its score id
(a uuid5 of those three): every read goes by run item, so the primary key now serves them and the
separate run-item index, one more entry to write per score, goes.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

from services.migrations_env import execute_script

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script(op, """
    ALTER TABLE scores DROP CONSTRAINT scores_pkey;
    ALTER TABLE scores ADD PRIMARY KEY (run_item_id, name, source);
    DROP INDEX scores_run_item
    """)


def downgrade() -> None:
    execute_script(op, """
    CREATE INDEX scores_run_item ON scores (run_item_id);
    ALTER TABLE scores DROP CONSTRAINT scores_pkey;
    ALTER TABLE scores ADD PRIMARY KEY (score_id)
    """)
