"""Fixtures for executing compiled workflow jobs in-process against real Postgres, Redis and object store."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from agentflow_dagster.db import make_engine
from agentflow_dagster.events import WorkflowRequest
from agentflow_dagster.workflows.spec import WorkflowSpec
from ops.compiler import request_run_config
from resources.llm import LLMResource
from resources.object_store import ObjectStoreResource
from resources.postgres import PostgresResource
from resources.redis import RedisResource
from tests.support.llm_server import LLMTestServer

Resources = Callable[..., dict[str, Any]]


@pytest.fixture
def workflow_resources(pg_url: str, redis_url: str, object_store_dir: Path) -> Resources:
    """Resources for a workflow job; pass `llm=` to use an endpoint instead of the offline provider."""

    def build(llm: LLMResource | None = None) -> dict[str, Any]:
        return {
            "postgres": PostgresResource(url=pg_url),
            "redis": RedisResource(url=redis_url),
            "object_store": ObjectStoreResource(local_dir=str(object_store_dir)),
            "llm": llm or LLMResource(),
        }

    return build


@pytest.fixture
def engine(pg_url: str) -> Iterator[sa.Engine]:
    eng = make_engine(pg_url)
    yield eng
    eng.dispose()


@pytest.fixture
def llm_server() -> Iterator[LLMTestServer]:
    with LLMTestServer() as srv:
        yield srv


def server_llm(server: LLMTestServer, **overrides: Any) -> LLMResource:
    """An LLMResource against the loopback server with short backoffs."""
    config: dict[str, Any] = {
        "base_url": server.base_url,
        "api_key": "test-key",
        "timeout_s": 5.0,
        "max_attempts": 3,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
        "models": {"default": "default-model", "fast": "fast-model", "reasoning": "reasoning-model"},
        **overrides,
    }
    return LLMResource(**config)


def new_request(spec: WorkflowSpec, inputs: dict[str, Any], **kwargs: Any) -> WorkflowRequest:
    return WorkflowRequest(
        event_id=f"ev-{uuid.uuid4().hex[:12]}", workflow=spec.name, inputs=inputs, **kwargs
    )


def execute(
    job: dg.JobDefinition, spec: WorkflowSpec, req: WorkflowRequest, resources: dict[str, Any]
) -> Any:
    """Run the job in-process with the run config the Kafka sensor would build."""
    run_config = request_run_config(req, spec.version, traceparent="00-" + "ab" * 16 + "-" + "cd" * 8 + "-01")
    return job.execute_in_process(run_config=run_config, resources=resources, raise_on_error=False)


def rows(engine: sa.Engine, sql: str, **params: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(sql), params))
