"""Indexes for run comparison and the dashboard views (the views themselves live in their own
schema and are created by services.projections.dashboard).

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
    execute_script(op, """
    -- A run's scores in (item, name) order with their values and run items: summaries and the
    -- comparison aggregate per item and join two runs in index order, reading the index alone.
    -- It replaces (run_id, name), so a score write maintains as many indexes as before.
    CREATE INDEX scores_run_item_name ON scores (run_id, dataset_item_id, name)
        INCLUDE (value, run_item_id);
    DROP INDEX scores_run;
    -- Item ids are unique within their dataset, not across datasets (teams reuse ids such as
    -- `q1`); the key also serves a dataset's items in id order: the pages of a comparison.
    ALTER TABLE dataset_items DROP CONSTRAINT dataset_items_pkey;
    ALTER TABLE dataset_items ADD PRIMARY KEY (dataset_id, id);
    DROP INDEX dataset_items_dataset;
    -- Those index-only reads skip the table only on pages VACUUM has marked all-visible; by
    -- default autovacuum waits for a fifth more rows, so in a large table the newest runs (the ones
    -- compared) would stay unmarked for long. Every 10,000 new rows instead: such a pass only
    -- visits the new pages.
    ALTER TABLE scores SET (autovacuum_vacuum_insert_scale_factor = 0,
                            autovacuum_vacuum_insert_threshold = 10000);
    ALTER TABLE run_items SET (autovacuum_vacuum_insert_scale_factor = 0,
                               autovacuum_vacuum_insert_threshold = 10000);
    """)


def downgrade() -> None:
    execute_script(op, """
    ALTER TABLE run_items RESET (autovacuum_vacuum_insert_scale_factor,
                                 autovacuum_vacuum_insert_threshold);
    ALTER TABLE scores RESET (autovacuum_vacuum_insert_scale_factor,
                              autovacuum_vacuum_insert_threshold);
    CREATE INDEX dataset_items_dataset ON dataset_items (dataset_id);
    ALTER TABLE dataset_items DROP CONSTRAINT dataset_items_pkey;
    ALTER TABLE dataset_items ADD PRIMARY KEY (id);
    CREATE INDEX scores_run ON scores (run_id, name);
    DROP INDEX scores_run_item_name;
    """)
