"""The tokens an evaluator's model used for each score (the LLM judge's, as its endpoint reported
them), so that a run's summary can say what judging it cost. Scores recorded before have none.

Revision ID: 0015
Revises: 0014
"""

from alembic import op

from services.migrations_env import execute_script

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    execute_script(op, """
    ALTER TABLE scores ADD COLUMN input_tokens integer, ADD COLUMN output_tokens integer
    """)


def downgrade() -> None:
    execute_script(op, """
    ALTER TABLE scores DROP COLUMN input_tokens, DROP COLUMN output_tokens
    """)
