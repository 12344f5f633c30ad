"""The FastAPI app factory: routers, limits, error mapping and metrics around one ApiContext."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from agentflow_dagster.api import documents, errors, health, runs, workflows
from agentflow_dagster.api.bodylimit import BodyLimitMiddleware
from agentflow_dagster.api.config import ApiConfig
from agentflow_dagster.api.context import ApiContext
from agentflow_dagster.api.metrics import MetricsMiddleware
from agentflow_dagster.observability import tracing
from agentflow_dagster.rag.retriever import Retriever
from agentflow_dagster.settings import Settings, get_settings
from agentflow_dagster.workflows.spec import WorkflowSpec

DESCRIPTION = """Submit multi-agent workflows, follow them, approve waiting tasks, upload documents, search.

Authenticate with `Authorization: Bearer <key>` (keys come from `agentflow keys create`)."""


def create_app(
    settings: Settings | None = None,
    config: ApiConfig | None = None,
    *,
    specs: dict[str, WorkflowSpec] | None = None,
    retriever_factory: Callable[[], Retriever] | None = None,
) -> FastAPI:
    """Build the gateway; nothing connects until the first request needs it."""
    config = config or ApiConfig()
    ctx = ApiContext.build(settings or get_settings(), config, specs, retriever_factory)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if config.tracing:
            tracing.setup_tracing("agentflow-api")
        if config.preload_retriever:
            threading.Thread(target=ctx.warm_up, name="retriever-warm-up", daemon=True).start()
        yield
        ctx.close()

    app = FastAPI(
        title="agentflow API",
        version="1.0.0",
        description=DESCRIPTION,
        openapi_url="/openapi.json",
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    app.include_router(workflows.router)
    app.include_router(runs.router)
    app.include_router(documents.router)
    app.include_router(health.router)
    errors.install(app)

    def limit_for(path: str) -> int:
        return config.max_document_bytes if path == "/v1/documents" else config.max_body_bytes

    app.add_middleware(BodyLimitMiddleware, limit_for=limit_for, metrics=ctx.metrics)
    app.add_middleware(MetricsMiddleware, metrics=ctx.metrics)  # outermost: counts 413s too
    return app
