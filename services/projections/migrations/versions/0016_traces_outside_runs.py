"""Traces posted outside any run (production traffic) by completion time: what GET /v1/traces
and GET /v1/monitoring read, a window of them, newest first, without reading a run's items.

Partial, so a run's trace (most of the table) adds no index entry: only production traces pay
for it on the write path. Their scores and evaluator failures are then read by run item (the
keys of scores and evaluation_failures); a trace by its id through run_items_trace.

Revision ID: 0016
Revises: 0015
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX run_items_outside_runs ON run_items (completed_at)"
               " WHERE run_id IS NULL")


def downgrade() -> None:
    op.execute("DROP INDEX run_items_outside_runs")
