"""RAG state between assets: parsed documents, chunks, and the embedding cache.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"

NOW = sa.text("now()")


def upgrade() -> None:
    # Vectors live in the vector store (pgvector tables or OpenSearch), created by the store itself,
    # so this migration also runs on a Postgres without the `vector` extension.
    op.create_table(
        "rag_documents",
        sa.Column("collection", sa.Text, primary_key=True),
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("content_type", sa.Text, nullable=False),
        sa.Column("title", sa.Text, nullable=False, server_default=""),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("chunked_version", sa.Text),
        sa.Column("chunker", sa.Text),
        sa.Column("run_id", sa.Text),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
    )
    op.create_table(
        "rag_chunks",
        sa.Column("collection", sa.Text, primary_key=True),
        sa.Column("chunk_id", sa.Text, primary_key=True),
        sa.Column("document", sa.Text, nullable=False),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("ordinal", sa.Integer, nullable=False),
        sa.Column("start_offset", sa.Integer, nullable=False),
        sa.Column("end_offset", sa.Integer, nullable=False),
        sa.Column("content_hash", sa.Text, nullable=False),
        sa.Column("n_tokens", sa.Integer, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("run_id", sa.Text),
    )
    op.create_index("ix_rag_chunks_document", "rag_chunks", ["collection", "document"])
    op.create_table(
        "rag_embedding_cache",
        sa.Column("model", sa.Text, primary_key=True),
        sa.Column("content_hash", sa.Text, primary_key=True),
        sa.Column("dim", sa.Integer, nullable=False),
        # float32 little-endian bytes: model-agnostic, no extension needed.
        sa.Column("vector", sa.LargeBinary, nullable=False),
        sa.Column("run_id", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
    )


def downgrade() -> None:
    for table in ("rag_embedding_cache", "rag_chunks", "rag_documents"):
        op.drop_table(table)
