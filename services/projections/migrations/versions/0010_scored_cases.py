"""Which run items the evaluator has reported on, and up to which time: a run's
`items_pending_scoring` (succeeded items whose latest trace has no evaluator report yet) is
counted against it.

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # observed_at: the latest time of a fact the evaluator reported on for the run item (the
    # trace's completion, or a score request's time), whatever the order the reports arrive in.
    op.execute("""
        CREATE TABLE scored_cases (
            run_id text NOT NULL,
            run_item_id text NOT NULL,
            observed_at timestamptz NOT NULL,
            PRIMARY KEY (run_id, run_item_id))
        """)
    # What was projected before this table existed is taken as scored; a rebuild recounts it
    # from the log.
    op.execute("""
        INSERT INTO scored_cases (run_id, run_item_id, observed_at)
        SELECT run_id, run_item_id, completed_at FROM run_items
        WHERE run_id IS NOT NULL AND status = 'succeeded'
        """)


def downgrade() -> None:
    op.execute("DROP TABLE scored_cases")
