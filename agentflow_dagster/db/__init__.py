"""The platform's Postgres schema (Alembic migrations) and engine helpers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def sqlalchemy_url(url: str) -> str:
    """Force the psycopg2 dialect: dagster-postgres breaks on SQLAlchemy 2.1's psycopg 3 default."""
    for prefix in ("postgresql+psycopg2://", "postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    raise ValueError(f"not a PostgreSQL URL: {url!r} (expected postgresql://user@host:port/db)")


def make_engine(url: str, **kwargs: object) -> sa.Engine:
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("connect_args", {"connect_timeout": 5})
    return sa.create_engine(sqlalchemy_url(url), **kwargs)  # type: ignore[arg-type]


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
