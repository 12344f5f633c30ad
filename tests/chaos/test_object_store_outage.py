"""The S3 object store (SeaweedFS, as `agentflow up` starts it) goes away during ingestion.

Back within the RAG retry window: the same run completes. Down for longer: the run fails after its
retries, writes nothing, and a re-materialization completes.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from agentflow_dagster import names
from assets.rag import COLLECTIONS, rag_assets, rag_checks
from assets.rag.assets import RAG_RETRY_POLICY
from resources.embeddings import EmbeddingsResource
from resources.object_store import ObjectStoreError
from resources.postgres import PostgresResource
from resources.vector_store import VectorStoreResource
from tests.rag.corpus import corpus
from tests.support.seaweed import SeaweedServer

pytestmark = pytest.mark.slow


@pytest.fixture
def seaweed(tmp_path: Path) -> Iterator[SeaweedServer]:
    """A SeaweedFS of this test only: stopping it (SIGTERM by pid) and starting it keeps its data and port."""
    server = SeaweedServer(tmp_path / "s3").start()
    try:
        yield server
    finally:
        server.stop()


COUNT = "SELECT count(*) FROM rag_documents WHERE collection = :c"


@dataclass
class Ingestion:
    """One collection of the test corpus in S3, and the RAG assets materialized on one instance."""

    resources: dict[str, Any]
    collection: str
    instance: dg.DagsterInstance

    def materialize(self) -> dg.ExecuteInJobResult:
        return dg.materialize(
            [*rag_assets, *rag_checks], partition_key=self.collection, resources=self.resources,
            instance=self.instance, raise_on_error=False,
        )  # fmt: skip

    def documents(self) -> int:
        with self.resources["postgres"].engine.connect() as conn:
            return int(conn.execute(sa.text(COUNT), {"c": self.collection}).scalar_one())

    def retries_of(self, result: dg.ExecuteInJobResult, step: str) -> int:
        return sum(1 for e in result.all_events if e.is_step_up_for_retry and e.step_key == step)


@pytest.fixture
def ingestion(seaweed: SeaweedServer, pg_url: str, embeddings: EmbeddingsResource) -> Iterator[Ingestion]:
    store_res = seaweed.resource()
    resources = {
        "postgres": PostgresResource(url=pg_url),
        "object_store": store_res,
        "embeddings": embeddings,
        "vector_store": VectorStoreResource(backend="pgvector", postgres_url=pg_url),
    }
    collection = f"outage_{uuid.uuid4().hex[:6]}"
    store = store_res.build()
    store.ensure_bucket(names.BUCKET_DOCUMENTS)
    for name, data in corpus().items():
        store.put(names.BUCKET_DOCUMENTS, f"{collection}/{name}", data)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(COLLECTIONS, [collection])
        yield Ingestion(resources, collection, instance)


def restart_after_first_retry(
    seaweed: SeaweedServer, instance: dg.DagsterInstance, failures: list[str]
) -> None:
    """Start SeaweedFS again once raw_documents has failed an attempt and is waiting for its retry."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        runs = instance.get_runs(limit=1)
        if runs and any(
            e.step_key == "raw_documents"
            for e in instance.all_logs(runs[0].run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)
        ):
            seaweed.start()
            return
        time.sleep(0.2)
    failures.append("raw_documents never went up for retry within 90 s")
    seaweed.start()


def test_store_back_within_the_retry_window_the_same_run_completes(
    seaweed: SeaweedServer, ingestion: Ingestion
) -> None:
    """Store down at the start, back after the first failed attempt: one run, retried, all 4 indexed."""
    seaweed.stop()
    failures: list[str] = []
    restarter = threading.Thread(
        target=restart_after_first_retry, args=(seaweed, ingestion.instance, failures), daemon=True
    )
    restarter.start()
    result = ingestion.materialize()
    restarter.join(timeout=100)
    assert not failures, failures
    assert result.success
    assert ingestion.retries_of(result, "raw_documents") >= 1  # the first attempt did fail
    assert len(ingestion.instance.get_runs()) == 1
    assert ingestion.documents() == len(corpus())
    indexed = [e for e in result.get_asset_materialization_events() if e.asset_key.path == ["rag_index"]]
    assert indexed and indexed[0].materialization.metadata["vectors"].value > 0


def test_a_long_outage_fails_the_run_retryably_and_a_rematerialization_completes(
    seaweed: SeaweedServer, ingestion: Ingestion
) -> None:
    """Down through every retry: raw_documents fails with ObjectStoreError, writes nothing; then all 4."""
    seaweed.stop()
    started = time.monotonic()
    failed = ingestion.materialize()
    took = time.monotonic() - started
    assert not failed.success and took < 120, f"{took:.0f}s"
    assert ingestion.retries_of(failed, "raw_documents") == RAG_RETRY_POLICY.max_retries
    (failure,) = [e for e in failed.all_events if e.is_step_failure]
    assert failure.step_key == "raw_documents"
    error = failure.step_failure_data.error
    assert error is not None and ObjectStoreError.__name__ in str(error.cause or error), error
    assert failed.get_asset_materialization_events() == []  # downstream assets did not run
    assert ingestion.documents() == 0  # nothing half-written

    seaweed.start()  # the same port, the same data folder: the corpus is still there
    again = ingestion.materialize()
    assert again.success
    assert ingestion.retries_of(again, "raw_documents") == 0
    assert ingestion.documents() == len(corpus())
    indexed = [e for e in again.get_asset_materialization_events() if e.asset_key.path == ["rag_index"]]
    assert indexed and indexed[0].materialization.metadata["vectors"].value > 0
