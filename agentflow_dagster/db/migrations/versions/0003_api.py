"""API gateway: hashed per-tenant API keys, submitted requests (idempotency keys), collection owners.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision = "0003"
down_revision = "0002"

NOW = sa.text("now()")


def upgrade() -> None:
    # Only the sha256 of a key is stored; `prefix` is the public, non-secret part used to find the row.
    op.create_table(
        "api_keys",
        sa.Column("prefix", sa.Text, primary_key=True),
        sa.Column("key_hash", sa.Text, nullable=False),
        sa.Column("tenant", sa.Text, nullable=False, index=True),
        sa.Column("name", sa.Text, nullable=False, server_default=""),
        sa.Column("scopes", ARRAY(sa.Text), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
    )
    # One row per accepted submission: the plan's owner before the sensor has seen the event,
    # and the durable half of the Idempotency-Key store (Redis holds the hot half with a TTL).
    op.create_table(
        "api_requests",
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("plan_id", sa.Text, nullable=False, unique=True),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("workflow", sa.Text, nullable=False),
        sa.Column("idempotency_key", sa.Text),
        sa.Column("request_hash", sa.Text, nullable=False),
        sa.Column("trace_id", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.Column("published_at", sa.DateTime(timezone=True)),
    )
    op.create_index(
        "ux_api_requests_tenant_idempotency_key",
        "api_requests",
        ["tenant", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    # The first tenant to upload into a collection owns it; others get 404 for it.
    op.create_table(
        "api_collections",
        sa.Column("collection", sa.Text, primary_key=True),
        sa.Column("tenant", sa.Text, nullable=False, index=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
    )


def downgrade() -> None:
    for table in ("api_collections", "api_requests", "api_keys"):
        op.drop_table(table)
