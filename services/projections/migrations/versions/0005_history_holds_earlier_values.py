"""score_history holds a score's earlier values only; its current value is its row in `scores`.
Together the two hold every ScoreRecorded applied, once, which is what deduplicates score events,
and a score's first value costs one row instead of two (docs/adr/0001, second amendment).

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DELETE FROM score_history h USING scores s WHERE h.event_id = s.event_id")


def downgrade() -> None:
    op.execute("""
        INSERT INTO score_history (event_id, score_id, value, string_value, comment, created_by,
            evaluator, evaluator_version, spec_hash, request_id, observed_at)
        SELECT event_id, score_id, value, string_value, comment, created_by, evaluator,
            evaluator_version, spec_hash, request_id, observed_at FROM scores
        ON CONFLICT (event_id) DO NOTHING""")
