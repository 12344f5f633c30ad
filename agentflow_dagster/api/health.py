"""/healthz (the process), /readyz (every backing service, for real), /metrics (Prometheus text)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from agentflow_dagster import names
from agentflow_dagster.api.auth import get_ctx
from agentflow_dagster.api.context import ApiContext
from agentflow_dagster.api.schemas import Health, Readiness

router = APIRouter(tags=["health"])


def _probe(fn: Callable[[], str]) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        detail, ok = fn(), True
    except Exception as exc:  # a failed probe is a finding, not a crash
        detail, ok = f"{type(exc).__name__}: {exc}".splitlines()[0][:200], False
    return {"ok": ok, "detail": detail, "ms": round((time.perf_counter() - start) * 1000, 1)}


def _postgres(ctx: ApiContext) -> str:
    with ctx.engine.connect() as conn:
        version = conn.execute(sa.text("SELECT version_num FROM agentflow_alembic_version")).scalar_one()
    return f"schema {version}"


def _redis(ctx: ApiContext) -> str:
    ctx.redis.ping()
    return "PONG"


def _kafka(ctx: ApiContext) -> str:
    admin = ctx.kafka.admin()
    try:
        topics = set(admin.list_topics())
    finally:
        admin.close()
    missing = [
        t for t in (names.TOPIC_REQUESTS, names.TOPIC_APPROVALS, names.TOPIC_DOCUMENTS) if t not in topics
    ]
    if missing:
        raise RuntimeError(f"missing topics {missing}")
    return f"{len(topics)} topics"


def _objects(ctx: ApiContext) -> str:
    buckets = ctx.objects.list_buckets()
    missing = [b for b in (names.BUCKET_DOCUMENTS, names.BUCKET_ARTIFACTS) if b not in buckets]
    if missing:
        raise RuntimeError(f"missing buckets {missing}")
    return f"{len(buckets)} buckets"


@router.get("/healthz", response_model=Health, summary="The process answers")
def healthz() -> Health:
    """Liveness: no dependency is checked."""
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "some dependency is unreachable"}},
    summary="Kafka, Postgres, Redis and the object store are reachable",
)
def readyz(ctx: ApiContext = Depends(get_ctx)) -> JSONResponse:
    """Readiness: one real round trip to each backing service."""
    checks = {
        "postgres": _probe(lambda: _postgres(ctx)),
        "redis": _probe(lambda: _redis(ctx)),
        "kafka": _probe(lambda: _kafka(ctx)),
        "object_store": _probe(lambda: _objects(ctx)),
    }
    ready = all(c["ok"] for c in checks.values())
    body = Readiness(ready=ready, checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}},
    summary="Prometheus metrics of the gateway itself",
)
def metrics(ctx: ApiContext = Depends(get_ctx)) -> Response:
    """Text exposition format."""
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)
