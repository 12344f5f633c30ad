"""Session fixtures: real servers on free loopback ports, started on first use and stopped at the end."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentflow_dagster import names
from agentflow_dagster.db import migrate
from agentflow_dagster.stack import services

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def servers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def pg_url(servers_dir: Path) -> Iterator[str]:
    """A fresh embedded Postgres (with pgvector) on a free port, app schema migrated."""
    svc = services.start_postgres(servers_dir, services.free_port())
    try:
        migrate(svc.address)
        yield svc.address
    finally:
        services.stop_postgres(servers_dir)


@pytest.fixture(scope="session")
def redis_url(servers_dir: Path) -> Iterator[str]:
    svc = services.start_redis(servers_dir, services.free_port())
    try:
        yield svc.address
    finally:
        services.stop_pid(svc.pid)


@pytest.fixture(scope="session")
def kafka_bootstrap(servers_dir: Path) -> Iterator[str]:
    """A Tansu broker with the DESIGN.md topics created (4 partitions each)."""
    from resources.kafka import KafkaResource

    svc = services.start_kafka(servers_dir, services.free_port())
    try:
        KafkaResource(bootstrap_servers=svc.address).ensure_topics(names.TOPICS, partitions=4)
        yield svc.address
    finally:
        services.stop_pid(svc.pid)


@pytest.fixture(scope="session")
def object_store_dir(servers_dir: Path) -> Path:
    """A local object-store root with the DESIGN.md buckets."""
    from resources.object_store import LocalObjectStore

    root = servers_dir / "objects"
    store = LocalObjectStore(root)
    for bucket in names.BUCKETS:
        store.ensure_bucket(bucket)
    return root
