"""The evaluator's reports on run items that left no score (no expected output to compare with, or
every evaluator failed), with their time. A report with scores is known by its scores' time;
with this table, a run's `items_pending_scoring` (succeeded items whose latest trace the evaluator
has not reported on yet) can be counted.

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # observed_at: the latest time of a fact the evaluator reported on without a score (the
    # trace's completion, or a score request's time), whatever the order the reports arrive in.
    op.execute("""
        CREATE TABLE scoreless_cases (
            run_id text NOT NULL,
            run_item_id text NOT NULL,
            observed_at timestamptz NOT NULL,
            PRIMARY KEY (run_id, run_item_id))
        """)
    # What was projected before this table existed is taken as scored; a rebuild recounts it
    # from the log.
    op.execute("""
        INSERT INTO scoreless_cases (run_id, run_item_id, observed_at)
        SELECT run_id, run_item_id, completed_at FROM run_items
        WHERE run_id IS NOT NULL AND status = 'succeeded'
        """)


def downgrade() -> None:
    op.execute("DROP TABLE scoreless_cases")
