"""A Dagster instance's runs read from its run storage tables, without importing Dagster.

`agentflow audit` needs a plan's runs (status, job, parent, times, tags); opening a `DagsterInstance`
for that costs 2-3 s of CPU in imports. The storage a `dagster.yaml` configures (Postgres, or SQLite,
Dagster's default) is read directly: the `runs` table (run_id, pipeline_name, status, run_body,
create_timestamp, start_time, end_time), the same columns `DagsterInstance.get_run_records` reads.
tests/workflows/test_audit.py checks the result against a run Dagster itself recorded, so a Dagster
upgrade that changes these tables fails there.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
import yaml

from agentflow_dagster import names


class RunStorageError(RuntimeError):
    """The instance's run storage cannot be located or read."""


def _value(raw: Any, where: str) -> str:
    """A config value: a literal, or `{env: VAR}` resolved from the environment."""
    if isinstance(raw, dict) and set(raw) == {"env"}:
        value = os.environ.get(raw["env"])
        if value is None:
            raise RunStorageError(f"{where} reads ${raw['env']}, which is not set")
        return value
    return str(raw)


def _postgres(config: dict[str, Any], where: str) -> str | None:
    if "postgres_url" in config:
        url = _value(config["postgres_url"], f"{where}.postgres_url")
        return url.replace("postgresql+psycopg2://", "postgresql://", 1)
    if db := config.get("postgres_db"):
        v = {k: _value(db[k], f"{where}.postgres_db.{k}") for k in db if k != "params"}
        auth = quote(v.get("username", "postgres")) + (
            f":{quote(v['password'])}" if v.get("password") else ""
        )
        return f"postgresql://{auth}@{v['hostname']}:{v.get('port', 5432)}/{v['db_name']}"
    return None


def run_storage_url(home: Path) -> str:
    """The SQLAlchemy URL of the run storage `home/dagster.yaml` configures (SQLite when it names none)."""
    config = yaml.safe_load((home / "dagster.yaml").read_text()) or {}
    section, where = config.get("storage"), "storage"
    if section is None and config.get("run_storage"):
        section, where = {"custom": config["run_storage"]}, "run_storage"
    base = str(home)
    for kind, body in (section or {}).items():
        body = body or {}
        if kind == "sqlite":
            base = _value(body.get("base_dir", base), f"{where}.sqlite.base_dir")
        elif url := _postgres(body.get("config", body), f"{where}.{kind}"):
            return url
        else:
            raise RunStorageError(
                f"{where}.{kind} in {home / 'dagster.yaml'}: no postgres_url or postgres_db"
            )
    # Read-only: a missing database is an error here, not a new empty file in someone's instance.
    return f"sqlite:///file:{Path(base) / 'history' / 'runs.db'}?mode=ro&uri=true"


def _timestamp(value: Any) -> str:
    """Dagster stores naive UTC (SQLite as text); the instance returns it tz-aware."""
    at = datetime.fromisoformat(value) if isinstance(value, str) else value
    return str(at.replace(tzinfo=UTC).isoformat())


def read_runs(url: str, run_ids: list[str], plan_id: str) -> list[dict[str, Any]]:
    """The runs tagged with the plan or named in `run_ids`, oldest first, as `audit` prints them."""
    query = sa.text(
        "SELECT run_id, pipeline_name, status, run_body, create_timestamp, start_time, end_time FROM runs "
        "WHERE run_id IN (SELECT run_id FROM run_tags WHERE key = :key AND value = :plan) "
        "OR run_id IN :ids ORDER BY create_timestamp, id"
    ).bindparams(sa.bindparam("ids", expanding=True))
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(query, {"key": names.TAG_PLAN_ID, "plan": plan_id, "ids": run_ids or [""]})
            found = [dict(r._mapping) for r in rows]
    finally:
        engine.dispose()
    out = []
    for row in found:
        body = json.loads(row["run_body"])
        out.append(
            {
                "run_id": row["run_id"],
                "job": row["pipeline_name"],
                "status": row["status"],
                "parent_run_id": body.get("parent_run_id"),
                "root_run_id": body.get("root_run_id"),
                "created_at": _timestamp(row["create_timestamp"]),
                "start_time": row["start_time"],
                "end_time": row["end_time"],
                "tags": dict(body.get("tags") or {}),
            }
        )
    return out
