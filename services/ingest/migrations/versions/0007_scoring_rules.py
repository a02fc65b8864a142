"""Scoring rules: which traces outside runs are scored, and by what (services/ingest/
scoring_rules.py). Read whenever such traces are posted; written rarely.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE scoring_rules (
        name           text PRIMARY KEY,
        evaluators     jsonb NOT NULL,
        sample_rate    double precision NOT NULL,
        where_metadata jsonb NOT NULL,
        enabled        boolean NOT NULL,
        created_at     timestamptz NOT NULL,
        updated_at     timestamptz NOT NULL
    )""")


def downgrade() -> None:
    op.execute("DROP TABLE scoring_rules")
