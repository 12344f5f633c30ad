"""The platform's Postgres schema (Alembic migrations) and engine helpers."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from agentflow_dagster.per_process import PerProcess

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def sqlalchemy_url(url: str) -> str:
    """Force the psycopg2 dialect: dagster-postgres breaks on SQLAlchemy 2.1's psycopg 3 default."""
    for prefix in ("postgresql+psycopg2://", "postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    raise ValueError(f"not a PostgreSQL URL: {url!r} (expected postgresql://user@host:port/db)")


@contextlib.contextmanager
def transaction(bind: sa.Engine | sa.Connection) -> Iterator[sa.Connection]:
    """A new transaction on an engine, or the caller's own on a connection (several writes, one commit)."""
    if isinstance(bind, sa.Connection):
        yield bind
        return
    with bind.begin() as conn:
        yield conn


def make_engine(url: str, **kwargs: object) -> sa.Engine:
    kwargs.setdefault("connect_args", {"connect_timeout": 5})
    engine = sa.create_engine(sqlalchemy_url(url), **kwargs)  # type: ignore[arg-type]
    return engine if kwargs.get("pool_pre_ping") else ping_when_idle(engine)


_ENGINES: PerProcess[sa.Engine] = PerProcess()


def shared_engine(url: str, pool_size: int = 2, max_overflow: int = 2) -> sa.Engine:
    """One engine per (process, URL, pool) for the life of the process, never disposed by its users.

    Dagster builds resources anew for every sensor tick (several a second in the code server): an
    engine per build opened a new Postgres connection, a backend process on the server, per tick
    (docs/performance.md). Keyed by pid, so a forked process never uses its parent's sockets.
    """
    return _ENGINES.get(
        (url, pool_size, max_overflow),
        lambda: make_engine(url, pool_size=pool_size, max_overflow=max_overflow),
    )


# A connection back in the pool for less than this is not pinged on its next checkout.
IDLE_PING_SECONDS = 1.0


def ping_when_idle(engine: sa.Engine, idle_seconds: float = IDLE_PING_SECONDS) -> sa.Engine:
    """Pessimistic disconnect handling that pings only connections idle for `idle_seconds` or more.

    `pool_pre_ping` spends a `SELECT 1` round trip on every checkout; a task or a Dagster run checks
    connections out many times a second, and a connection used a moment ago is alive in all but a
    vanishing window. A stale one (after a Postgres restart, say) fails the ping, the listener raises
    DisconnectionError, and the pool replaces it before handing it out, as with pre-ping.
    """

    @sa.event.listens_for(engine, "checkin")
    def _checked_in(dbapi_conn: Any, record: Any) -> None:
        record.info["agentflow_idle_since"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        since = record.info.get("agentflow_idle_since")
        if since is None or time.monotonic() - since < idle_seconds:
            return  # a new connection, or one used a moment ago
        try:
            cursor = dbapi_conn.cursor()
            try:
                cursor.execute("SELECT 1")
            finally:
                cursor.close()
        except Exception as exc:  # any DBAPI error here means: do not hand this connection out
            raise sa.exc.DisconnectionError(f"idle connection failed its ping: {exc}") from exc

    return engine


def alembic_config(url: str) -> Config:
    # Imported here: alembic costs ~0.5 s and every run worker imports this module but never migrates.
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    return cfg


def migrate(url: str) -> None:
    """Bring the app schema to the newest revision (idempotent, safe to run concurrently)."""
    from alembic import command

    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            # Serialize concurrent migrators (daemon, webserver, run workers starting together).
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(727274)"))
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    finally:
        engine.dispose()
