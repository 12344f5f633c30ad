"""Dead letters are looked up by the record they came from, so a re-read record is not sent twice.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    # Partial: only dead-letter audit rows carry `letter_key` (sensors/workflow_requests.py).
    op.execute(
        "CREATE INDEX ix_audit_log_letter_key ON audit_log ((detail->>'letter_key')) "
        "WHERE action = 'event.dead_lettered'"
    )


def downgrade() -> None:
    op.execute("DROP INDEX ix_audit_log_letter_key")
