"""Postgres (warm state): definitions, execution history, task outputs, audit log, LLM calls."""

from __future__ import annotations

import json
from typing import Any

import dagster as dg
import sqlalchemy as sa
from pydantic import PrivateAttr

from agentflow_dagster.db import migrate, shared_engine


class PostgresResource(dg.ConfigurableResource):
    """A SQLAlchemy engine (psycopg2 dialect) over the app schema, migrated on first use.

    The engine is the process's shared one for this URL (`shared_engine`): building the resource,
    which Dagster does for every sensor tick and every run, opens no new connection."""

    url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    pool_size: int = 2

    _engine: sa.Engine | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._engine = shared_engine(self.url, pool_size=self.pool_size)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self._engine = None  # shared with later builds in this process: not disposed here

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            self._engine = shared_engine(self.url, pool_size=self.pool_size)
        return self._engine

    def warm(self) -> None:
        """Open a pooled connection of the shared engine now (a standby run worker, before its run)."""
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def migrate(self) -> None:
        migrate(self.url)

    def audit(
        self, actor: str, action: str, plan_id: str | None = None, subject: str = "", **detail: Any
    ) -> None:
        """Append one audit-log entry."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO audit_log (plan_id, actor, action, subject, detail) "
                    "VALUES (:p, :a, :act, :s, CAST(:d AS jsonb))"
                ),
                {"p": plan_id, "a": actor, "act": action, "s": subject, "d": json.dumps(detail, default=str)},
            )
