"""Vector store: pgvector in Postgres (embedded default) or OpenSearch k-NN (production)."""

from __future__ import annotations

import dagster as dg
from pydantic import PrivateAttr

from agentflow_dagster.rag.opensearch_store import OpenSearchVectorStore
from agentflow_dagster.rag.pgvector_store import PgVectorStore
from agentflow_dagster.rag.store import VectorStore


class VectorStoreResource(dg.ConfigurableResource):
    """`backend="pgvector"` uses `postgres_url`; `backend="opensearch"` uses `opensearch_url`."""

    backend: str = "pgvector"
    postgres_url: str = ""
    opensearch_url: str = ""
    opensearch_username: str = ""
    opensearch_password: str = ""
    opensearch_verify_certs: bool = True
    index_prefix: str = "agentflow-rag"
    opensearch_shards: int = 1
    opensearch_replicas: int = 0
    engine: str = "lucene"
    space_type: str = "cosinesimil"
    hnsw_m: int = 16
    hnsw_ef_construction: int = 64
    ef_search: int = 100

    _store: VectorStore | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._store = self.build()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def build(self) -> VectorStore:
        if self.backend == "pgvector":
            if not self.postgres_url:
                raise ValueError("VectorStoreResource(backend='pgvector') needs postgres_url")
            return PgVectorStore(
                self.postgres_url,
                hnsw_m=self.hnsw_m,
                hnsw_ef_construction=self.hnsw_ef_construction,
                ef_search=self.ef_search,
            )
        if self.backend == "opensearch":
            from opensearchpy import OpenSearch

            if not self.opensearch_url:
                raise ValueError("VectorStoreResource(backend='opensearch') needs opensearch_url")
            auth = (self.opensearch_username, self.opensearch_password) if self.opensearch_username else None
            client = OpenSearch(
                hosts=[self.opensearch_url],
                http_auth=auth,
                verify_certs=self.opensearch_verify_certs,
                timeout=30,
                max_retries=3,
                retry_on_timeout=True,
            )
            return OpenSearchVectorStore(
                client,
                index_prefix=self.index_prefix,
                engine=self.engine,
                space_type=self.space_type,
                hnsw_m=self.hnsw_m,
                hnsw_ef_construction=self.hnsw_ef_construction,
                ef_search=self.ef_search,
                shards=self.opensearch_shards,
                replicas=self.opensearch_replicas,
            )
        raise ValueError(f"vector store backend {self.backend!r} is not 'pgvector' or 'opensearch'")

    @property
    def store(self) -> VectorStore:
        if self._store is None:
            self._store = self.build()
        return self._store
