"""Real health checks for each component: a query, a PING, a metadata request, a bucket listing, HTTP."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from agentflow_dagster import names

_GQL_HEALTH = """
{ instance { daemonHealth { allDaemonStatuses { daemonType healthy required } } }
  workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
    locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""


@dataclass
class Check:
    component: str
    address: str
    healthy: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _run(component: str, address: str, probe: Callable[[], str]) -> Check:
    try:
        return Check(component, address, True, probe())
    except Exception as exc:  # every failure of a probe is a finding, not a crash
        return Check(component, address, False, f"{type(exc).__name__}: {exc}".splitlines()[0][:300])


def check_postgres(url: str) -> Check:
    def probe() -> str:
        import psycopg2

        conn = psycopg2.connect(url, connect_timeout=3)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT version_num FROM agentflow_alembic_version")
                row = cur.fetchone()
                cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
                vec = cur.fetchone()
        finally:
            conn.close()
        return f"schema {row[0] if row else '?'}, pgvector {vec[0] if vec else 'missing'}"

    return _run("postgres", url, probe)


def check_redis(url: str) -> Check:
    def probe() -> str:
        import redis

        client = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
        try:
            client.ping()
            return f"PONG, redis {client.info('server')['redis_version']}"
        finally:
            client.close()

    return _run("redis", url, probe)


def check_kafka(bootstrap: str) -> Check:
    def probe() -> str:
        from agentflow_dagster.clients import KafkaClients

        admin = KafkaClients(bootstrap, request_timeout_ms=5000, client_id="agentflow-status").admin()
        try:
            topics = set(admin.list_topics())
        finally:
            admin.close()
        missing = [t for t in names.TOPICS if t not in topics]
        if missing:
            raise RuntimeError(f"topics missing: {', '.join(missing)}")
        return f"{len(topics)} topics"

    return _run("kafka", bootstrap, probe)


def check_object_store(store: Callable[[], Any], address: str, expected: list[str] | None = None) -> Check:
    """A signed S3 ListBuckets call on the store `store()` builds; healthy when every expected bucket is
    there (no keys to build it with is a finding too)."""

    def probe() -> str:
        buckets = set(store().list_buckets())
        missing = [b for b in expected or names.BUCKETS if b not in buckets]
        if missing:
            raise RuntimeError(f"buckets missing: {', '.join(missing)}")
        return f"S3 ListBuckets: {len(buckets)} buckets"

    return _run("object_store", address, probe)


def check_dagster(webserver_url: str) -> list[Check]:
    """The webserver's health, the daemons' heartbeats and the code location's load status."""
    try:
        info = httpx.get(f"{webserver_url}/server_info", timeout=5)
        info.raise_for_status()
        resp = httpx.post(f"{webserver_url}/graphql", json={"query": _GQL_HEALTH}, timeout=15)
        resp.raise_for_status()
        data = resp.json()["data"]
    except Exception as exc:
        msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        return [
            Check(c, webserver_url, False, msg)
            for c in ("dagster_webserver", "dagster_daemon", "code_location")
        ]
    version = info.json().get("dagster_version", "?")
    daemons = data["instance"]["daemonHealth"]["allDaemonStatuses"]
    unhealthy = [d["daemonType"] for d in daemons if d["required"] and not d["healthy"]]
    checks = [
        Check("dagster_webserver", webserver_url, True, f"dagster {version}"),
        Check(
            "dagster_daemon",
            webserver_url,
            not unhealthy,
            f"unhealthy: {', '.join(unhealthy)}" if unhealthy else f"{len(daemons)} daemons healthy",
        ),
    ]
    ws = data["workspaceOrError"]
    entries = ws.get("locationEntries", []) if ws["__typename"] == "Workspace" else []
    loc = next((e for e in entries if e["name"] == "agentflow"), None)
    if loc is None:
        checks.append(
            Check("code_location", webserver_url, False, "location 'agentflow' not in the workspace")
        )
    else:
        err = loc["locationOrLoadError"] or {}
        ok = loc["loadStatus"] == "LOADED" and err.get("__typename") == "RepositoryLocation"
        detail = "agentflow loaded" if ok else (err.get("message") or loc["loadStatus"])[:300]
        checks.append(Check("code_location", webserver_url, ok, detail))
    return checks


def check_metrics(url: str) -> Check:
    """Scrape /metrics and parse it; healthy when every source it aggregates answered."""

    def probe() -> str:
        from prometheus_client.parser import text_string_to_metric_families

        resp = httpx.get(url, timeout=15)
        resp.raise_for_status()
        families = list(text_string_to_metric_families(resp.text))
        down = [
            s.labels["source"]
            for f in families
            if f.name == "agentflow_metrics_source_up"
            for s in f.samples
            if s.value == 0
        ]
        if down:
            raise RuntimeError(f"sources not answering: {', '.join(down)}; see the metrics log")
        return f"{len(families)} metric families"

    return _run("metrics", url, probe)
