"""RAG fixtures: the embedding model (loaded once per session) and resources on the session servers."""

from __future__ import annotations

import pytest

from resources.embeddings import EmbeddingsResource
from resources.postgres import PostgresResource
from resources.vector_store import VectorStoreResource
from tests.support.seaweed import SeaweedServer


@pytest.fixture(scope="session")
def embeddings() -> EmbeddingsResource:
    res = EmbeddingsResource()
    res.embed(["warm up"])  # load the model once; every later test reuses it
    return res


@pytest.fixture(scope="session")
def rag_resources(pg_url: str, s3_server: SeaweedServer, embeddings: EmbeddingsResource) -> dict[str, object]:
    """The session's S3 server (as the CLI and API reach it through the settings), Postgres, pgvector."""
    return {
        "postgres": PostgresResource(url=pg_url),
        "object_store": s3_server.resource(),
        "embeddings": embeddings,
        "vector_store": VectorStoreResource(backend="pgvector", postgres_url=pg_url),
    }
