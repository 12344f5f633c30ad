"""Observability: how LLM content was kept, what was redacted, indexes for scrape-time metrics, totals view.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    # "redacted" or "none" (no content stored); NULL for rows written by a recorder that does not redact.
    # `redactions` counts replacements per pattern name.
    op.add_column("llm_calls", sa.Column("content_mode", sa.Text))
    op.add_column("llm_calls", sa.Column("redactions", JSONB))
    op.create_index("ix_llm_calls_trace_id", "llm_calls", ["trace_id"])
    # /metrics aggregates these tables on every scrape: group-by columns are indexed.
    op.create_index("ix_task_runs_agent_status", "task_runs", ["agent", "status"])
    op.create_index("ix_audit_log_action", "audit_log", ["action"])
    op.create_index("ix_workflow_runs_workflow_status", "workflow_runs", ["workflow", "tenant", "status"])
    op.execute(
        "CREATE VIEW workflow_llm_totals AS SELECT plan_id, count(*) AS llm_calls, "
        "count(*) FILTER (WHERE error IS NOT NULL) AS llm_errors, "
        "COALESCE(sum(input_tokens), 0) AS input_tokens, COALESCE(sum(output_tokens), 0) AS output_tokens, "
        "COALESCE(sum(cost_usd), 0) AS cost_usd, COALESCE(sum(latency_ms), 0) AS latency_ms, "
        "avg((evaluation->>'groundedness')::float) AS mean_groundedness, "
        "avg((evaluation->>'answer_relevance')::float) AS mean_answer_relevance "
        "FROM llm_calls GROUP BY plan_id"
    )


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS workflow_llm_totals")
    op.drop_index("ix_workflow_runs_workflow_status", "workflow_runs")
    op.drop_index("ix_audit_log_action", "audit_log")
    op.drop_index("ix_task_runs_agent_status", "task_runs")
    op.drop_index("ix_llm_calls_trace_id", "llm_calls")
    op.drop_column("llm_calls", "redactions")
    op.drop_column("llm_calls", "content_mode")
