"""Human approvals: the state of each approval gate and every decision event received.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"

NOW = sa.text("now()")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # One row per gate (a `requires_approval` task of a plan): waiting, approved or rejected.
    op.create_table(
        "workflow_approvals",
        sa.Column("plan_id", sa.Text, primary_key=True),
        sa.Column("task_id", sa.Text, primary_key=True),
        sa.Column("status", sa.Text, nullable=False),
        # Set when a run reached the gate without a decision.
        sa.Column("requested_at", TS),
        sa.Column("deadline", TS),
        sa.Column("timeout_s", sa.Float),
        sa.Column("on_timeout", sa.Text),
        sa.Column("escalate_to", sa.Text),
        sa.Column("escalated_at", TS),
        sa.Column("waiting_run_id", sa.Text),
        # The decision that closed the gate (a human's event, or the timeout).
        sa.Column("decision", sa.Text),
        sa.Column("decided_by", sa.Text),
        sa.Column("decided_at", TS),
        sa.Column("comment", sa.Text),
        sa.Column("decision_event_id", sa.Text, unique=True),
        sa.Column("traceparent", sa.Text),
        # The resume run: its run_key, when the sensor saw it exist, and the run that applied the decision.
        sa.Column("resume_run_key", sa.Text),
        sa.Column("launched_at", TS),
        sa.Column("applied_run_id", sa.Text),
        sa.Column("applied_at", TS),
        sa.Column("updated_at", TS, nullable=False, server_default=NOW),
    )
    op.create_index(
        "ix_workflow_approvals_waiting",
        "workflow_approvals",
        ["deadline"],
        postgresql_where=sa.text("status = 'waiting'"),
    )
    op.create_index(
        "ix_workflow_approvals_unlaunched",
        "workflow_approvals",
        ["resume_run_key"],
        postgresql_where=sa.text("resume_run_key IS NOT NULL AND launched_at IS NULL"),
    )
    # Every `agentflow.workflow.approvals` event once (event_id), with what it did.
    op.create_table(
        "approval_events",
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("plan_id", sa.Text, nullable=False, index=True),
        sa.Column("task_id", sa.Text, nullable=False),
        sa.Column("decision", sa.Text, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("comment", sa.Text, nullable=False, server_default=""),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("decided_at", TS, nullable=False),
        sa.Column("received_at", TS, nullable=False, server_default=NOW),
        sa.Column("outcome", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("approval_events")
    op.drop_index("ix_workflow_approvals_unlaunched", "workflow_approvals")
    op.drop_index("ix_workflow_approvals_waiting", "workflow_approvals")
    op.drop_table("workflow_approvals")
