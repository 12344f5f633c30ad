"""Tool calls: one row per call an agent's model asked for, with what became of it.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0008"
down_revision = "0007"

NOW = sa.text("now()")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # task_id holds the task key (`task[mapping_key]` for fanned-out tasks), as in llm_calls and task_runs.
    op.create_table(
        "tool_calls",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("plan_id", sa.Text, nullable=False, index=True),
        sa.Column("task_id", sa.Text, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("run_id", sa.Text),
        sa.Column("tool", sa.Text, nullable=False),
        # The model's id for the call (gen_ai.tool.call.id) and sha256 of tool name + canonical arguments.
        sa.Column("call_id", sa.Text),
        sa.Column("call_digest", sa.Text, nullable=False),
        # Secrets redacted; NULL when the arguments were not even a JSON object.
        sa.Column("arguments", JSONB),
        sa.Column("status", sa.Text, nullable=False),  # ok | error | refused | pending_approval
        sa.Column("result", JSONB),
        sa.Column("result_ref", sa.Text),  # object-store key (artifacts bucket) of a large result
        sa.Column("error", sa.Text),
        sa.Column("latency_ms", sa.Float),
        sa.Column("side_effects", sa.Text),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
    )
    # Exactly once: one successful result per call of a task of a plan; a retry reads it back.
    op.create_index(
        "ux_tool_calls_ok",
        "tool_calls",
        ["plan_id", "task_id", "call_digest"],
        unique=True,
        postgresql_where=sa.text("status = 'ok'"),
    )


def downgrade() -> None:
    op.drop_index("ux_tool_calls_ok", "tool_calls")
    op.drop_table("tool_calls")
