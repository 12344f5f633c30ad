"""Fixtures for the gateway tests: the app on the session servers, keys per tenant, a topic reader."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from kafka import KafkaConsumer, TopicPartition

from agentflow_dagster.api import create_app
from agentflow_dagster.api.config import ApiConfig, TenantLimits
from agentflow_dagster.api.keys import create_key
from agentflow_dagster.db import make_engine
from agentflow_dagster.settings import Settings
from agentflow_dagster.workflows.loader import load_specs
from agentflow_dagster.workflows.spec import WorkflowSpec

APPROVAL_SPEC = {
    "name": "approval_demo",
    "version": "1.0.0",
    "inputs": [{"name": "message", "type": "string"}],
    "tasks": [
        {"task_id": "classify", "agent": "classifier", "inputs": {"message": "$request.message"}},
        {
            "task_id": "publish",
            "agent": "classifier",
            "depends_on": ["classify"],
            "inputs": {"message": "$request.message"},
            "requires_approval": True,
        },
    ],
}


@dataclass(frozen=True)
class Record:
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]

    def json(self) -> dict[str, Any]:
        """The value as a JSON object; {} for anything else (the session's topics also hold other
        tests' deliberately bad events)."""
        try:
            data = json.loads(self.value)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}


def read_topic(bootstrap: str, topic: str, timeout_s: float = 15.0) -> list[Record]:
    """Every record of `topic`: assign + seek to the beginning, poll until the end offsets (bounded)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap.split(","),
        group_id=None,
        enable_auto_commit=False,
        consumer_timeout_ms=500,
    )
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        out: list[Record] = []
        deadline = time.monotonic() + timeout_s
        # The first polls after a seek often return nothing: loop until every partition reached its end.
        while any(consumer.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end offsets {end} in {timeout_s}s")
            for batch in consumer.poll(timeout_ms=300).values():
                out += [Record(r.key, r.value, {k: v for k, v in r.headers}) for r in batch]
        return out
    finally:
        consumer.close()


@pytest.fixture(scope="session")
def api_settings(pg_url: str, redis_url: str, kafka_bootstrap: str, object_store_dir: Path) -> Settings:
    return Settings(
        data_dir=object_store_dir.parent,
        postgres_url=pg_url,
        redis_url=redis_url,
        kafka_bootstrap_servers=kafka_bootstrap,
        inline_input_limit=1024,
    )


@pytest.fixture(scope="session")
def api_config() -> ApiConfig:
    return ApiConfig(
        requests_per_minute=100_000,
        max_body_bytes=16 * 1024,
        max_document_bytes=64 * 1024,
        kafka_timeout_s=5,
        sse_poll_s=0.1,
        sse_max_s=20,
        usage_cache_s=0,
        tenant_limits={
            "limited": TenantLimits(requests_per_minute=3),
            "broke": TenantLimits(daily_token_budget=100),
        },
    )


@pytest.fixture(scope="session")
def specs() -> dict[str, WorkflowSpec]:
    return {**load_specs(), "approval_demo": WorkflowSpec.model_validate(APPROVAL_SPEC)}


@pytest.fixture(scope="session")
def client(
    api_settings: Settings, api_config: ApiConfig, specs: dict[str, WorkflowSpec]
) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings, api_config, specs=specs)) as c:
        yield c


@pytest.fixture(scope="session")
def engine(pg_url: str) -> Iterator[sa.Engine]:
    eng = make_engine(pg_url)
    yield eng
    eng.dispose()


class Keys:
    """Creates keys on demand and hands back ready-made Authorization headers."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def __call__(self, tenant: str, *scopes: str, expires_in: timedelta | None = None) -> dict[str, str]:
        key, _ = create_key(
            self.engine, tenant, scopes or ("submit", "read", "approve"), expires_in=expires_in
        )
        return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="session")
def keys(engine: sa.Engine) -> Keys:
    return Keys(engine)
