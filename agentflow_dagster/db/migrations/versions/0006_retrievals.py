"""Retrieval records: one row per search a task made, with the physical index and the chunks it returned.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0006"
down_revision = "0005"

NOW = sa.text("now()")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # task_id holds the task key (`task[mapping_key]` for fanned-out tasks), as in llm_calls and task_runs.
    op.create_table(
        "retrievals",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("plan_id", sa.Text, nullable=False, index=True),
        sa.Column("task_id", sa.Text, nullable=False),
        sa.Column("run_id", sa.Text),
        sa.Column("trace_id", sa.Text),
        sa.Column("span_id", sa.Text),
        sa.Column("collection", sa.Text, nullable=False),
        # Redacted like llm_calls prompts; NULL when content_mode is "none".
        sa.Column("query", sa.Text),
        sa.Column("content_mode", sa.Text),
        sa.Column("redactions", JSONB),
        sa.Column("k", sa.Integer, nullable=False),
        sa.Column("mode", sa.Text),
        sa.Column("backend", sa.Text),
        # The physical index behind the collection's alias when the search ran (a pgvector generation
        # table, an OpenSearch index): it survives the alias moving on to a rebuilt index.
        sa.Column("index_name", sa.Text),
        sa.Column("embedding_model", sa.Text),
        sa.Column("latency_ms", sa.Float),
        # [{chunk_id, document, version, ordinal, start, end, score, vector_rank, text_rank}] in rank order.
        sa.Column("hits", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("error", sa.Text),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
    )


def downgrade() -> None:
    op.drop_table("retrievals")
