"""Fixtures for the sensor tests: clients on the session servers and a Dagster instance on Postgres."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from agentflow_dagster.db import make_engine, sqlalchemy_url
from resources.kafka import KafkaResource
from resources.object_store import ObjectStoreResource
from resources.postgres import PostgresResource
from sensors.kafka_reader import KafkaRecord, KafkaTopicReader, ReaderConfig

LOG = logging.getLogger("tests.sensors")
FAST = ReaderConfig(idle_seconds=0.3, idle_polls=2, confirm_seconds=1.0)


@pytest.fixture(scope="session")
def kafka(kafka_bootstrap: str) -> KafkaResource:
    return KafkaResource(bootstrap_servers=kafka_bootstrap)


@pytest.fixture(scope="session")
def postgres(pg_url: str) -> PostgresResource:
    return PostgresResource(url=pg_url)


@pytest.fixture(scope="session")
def object_store(object_store_dir: Path) -> ObjectStoreResource:
    return ObjectStoreResource(local_dir=str(object_store_dir))


@pytest.fixture(scope="session")
def dagster_storage_url(pg_url: str) -> str:
    """A database of its own on the session Postgres for the tests' Dagster instances."""
    admin = make_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if not conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = 'dagster_sensors'")).first():
            conn.execute(sa.text("CREATE DATABASE dagster_sensors"))
    admin.dispose()
    return (
        make_url(sqlalchemy_url(pg_url)).set(database="dagster_sensors").render_as_string(hide_password=False)
    )


@pytest.fixture(scope="session")
def dagster_instance(dagster_storage_url: str) -> Iterator[dg.DagsterInstance]:
    """A real Dagster instance whose storage is a database of its own on the session Postgres."""
    overrides = {"storage": {"postgres": {"postgres_url": dagster_storage_url}}}
    with dg.instance_for_test(overrides=overrides) as instance:
        yield instance


def end_cursor(kafka: KafkaResource, topic: str) -> str:
    """A cursor at the current end of `topic`, so a test only sees what it produced."""
    return (
        KafkaTopicReader(topic, kafka.consumer, kafka.producer, LOG, FAST).read(None, lambda r: None).cursor
    )


def read_all(kafka: KafkaResource, topic: str, cursor: str) -> list[KafkaRecord]:
    """Every record after `cursor` (one generous tick)."""
    out: list[KafkaRecord] = []
    result = KafkaTopicReader(topic, kafka.consumer, kafka.producer, LOG, FAST).read(cursor, out.append)
    assert result.caught_up
    return out
