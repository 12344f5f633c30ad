"""The S3 object store (moto on loopback) goes away during ingestion: the asset fails, a re-run completes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from agentflow_dagster import names
from agentflow_dagster.stack.services import free_port
from assets.rag import COLLECTIONS, rag_assets, rag_checks
from resources.embeddings import EmbeddingsResource
from resources.object_store import ObjectStoreError, ObjectStoreResource
from resources.postgres import PostgresResource
from resources.vector_store import VectorStoreResource
from tests.rag.corpus import corpus

pytestmark = pytest.mark.slow


class Moto:
    """moto's S3 server on one port; stopping it keeps its buckets (they live in this process)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server: Any = None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture
def moto() -> Iterator[Moto]:
    server = Moto()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_ingestion_fails_while_the_store_is_down_and_a_rematerialization_completes(
    moto: Moto, pg_url: str, embeddings: EmbeddingsResource
) -> None:
    """Store down: raw_documents fails with ObjectStoreError, writes nothing; store back: all 4 indexed."""
    store_res = ObjectStoreResource(
        endpoint=f"127.0.0.1:{moto.port}", access_key="test", secret_key="test-secret"
    )
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

        def materialize() -> Any:
            return dg.materialize(
                [*rag_assets, *rag_checks], partition_key=collection, resources=resources,
                instance=instance, raise_on_error=False,
            )  # fmt: skip

        moto.stop()
        started = time.monotonic()
        failed = materialize()
        took = time.monotonic() - started
        assert not failed.success and took < 60, f"{took:.0f}s"
        (failure,) = [e for e in failed.all_events if e.is_step_failure]
        assert failure.step_key == "raw_documents"
        error = failure.step_failure_data.error
        assert error is not None and ObjectStoreError.__name__ in str(error.cause or error), error
        assert failed.get_asset_materialization_events() == []  # downstream assets did not run

        engine = resources["postgres"].engine
        with engine.connect() as conn:
            count = "SELECT count(*) FROM rag_documents WHERE collection = :c"
            assert conn.execute(sa.text(count), {"c": collection}).scalar() == 0  # nothing half-written

        moto.start()  # the same port, the same buckets
        again = materialize()
        assert again.success
        with engine.connect() as conn:
            assert conn.execute(sa.text(count), {"c": collection}).scalar() == len(corpus())
        indexed = [e for e in again.get_asset_materialization_events() if e.asset_key.path == ["rag_index"]]
        assert indexed and indexed[0].materialization.metadata["vectors"].value > 0
