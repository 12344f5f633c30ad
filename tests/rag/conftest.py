"""RAG fixtures: the embedding model (loaded once per session) and resources on the session servers."""

from __future__ import annotations

from pathlib import Path

import pytest

from resources.embeddings import EmbeddingsResource
from resources.object_store import ObjectStoreResource
from resources.postgres import PostgresResource
from resources.vector_store import VectorStoreResource


@pytest.fixture(scope="session")
def embeddings() -> EmbeddingsResource:
    res = EmbeddingsResource()
    res.embed(["warm up"])  # load the model once; every later test reuses it
    return res


@pytest.fixture(scope="session")
def rag_resources(pg_url: str, object_store_dir: Path, embeddings: EmbeddingsResource) -> dict[str, object]:
    return {
        "postgres": PostgresResource(url=pg_url),
        "object_store": ObjectStoreResource(local_dir=str(object_store_dir)),
        "embeddings": embeddings,
        "vector_store": VectorStoreResource(backend="pgvector", postgres_url=pg_url),
    }
