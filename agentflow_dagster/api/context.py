"""What every request handler shares: engine, Redis, Kafka producer, object store, specs, limits, metrics."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis as redis_lib
import sqlalchemy as sa
from kafka import KafkaProducer

from agentflow_dagster.api.config import ApiConfig
from agentflow_dagster.api.limits import RateLimiter, TokenBudget
from agentflow_dagster.api.metrics import ApiMetrics
from agentflow_dagster.db import make_engine
from agentflow_dagster.rag.retriever import Retriever
from agentflow_dagster.resources_env import build_resources
from agentflow_dagster.settings import Settings
from agentflow_dagster.workflows.loader import load_specs
from agentflow_dagster.workflows.spec import WorkflowSpec
from resources.kafka import KafkaResource
from resources.object_store import ObjectStore

if TYPE_CHECKING:
    from agentflow_dagster.api.direct import DirectLauncher

log = logging.getLogger("agentflow.api")


class Unavailable(RuntimeError):
    """A backing service failed; answered as 503 so the client retries."""


def default_retriever(postgres_url: str, settings: Settings) -> Retriever:
    """The offline MiniLM embedder over pgvector (or OpenSearch when AGENTFLOW_OPENSEARCH_URL is set)."""
    from resources.embeddings import EmbeddingsResource
    from resources.vector_store import VectorStoreResource

    backend = "opensearch" if settings.opensearch_url else "pgvector"
    store = VectorStoreResource(
        backend=backend, postgres_url=postgres_url, opensearch_url=settings.opensearch_url or ""
    ).build()
    return Retriever(EmbeddingsResource().build(), store)


@dataclass
class ApiContext:
    """Clients are created on first use, so building the app never connects anywhere."""

    settings: Settings
    config: ApiConfig
    postgres_url: str
    redis_url: str
    kafka: KafkaResource
    objects: ObjectStore
    specs: dict[str, WorkflowSpec]
    metrics: ApiMetrics
    retriever_factory: Callable[[], Retriever]
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Separate, so loading the model never holds up requests that only need the engine or Redis.
    _retriever_lock: threading.Lock = field(default_factory=threading.Lock)
    _engine: sa.Engine | None = None
    _redis: redis_lib.Redis | None = None
    _producer: KafkaProducer | None = None
    _retriever: Retriever | None = None

    @classmethod
    def build(
        cls,
        settings: Settings,
        config: ApiConfig,
        specs: dict[str, WorkflowSpec] | None = None,
        retriever_factory: Callable[[], Retriever] | None = None,
    ) -> ApiContext:
        res = build_resources(settings)
        postgres_url = res["postgres"].url
        return cls(
            settings=settings,
            config=config,
            postgres_url=postgres_url,
            redis_url=res["redis"].url,
            kafka=KafkaResource(
                bootstrap_servers=res["kafka"].bootstrap_servers,
                request_timeout_ms=int(config.kafka_timeout_s * 1000),
                client_id="agentflow-api",
            ),
            objects=res["object_store"].build(),
            specs=load_specs() if specs is None else specs,
            metrics=ApiMetrics(),
            retriever_factory=retriever_factory or (lambda: default_retriever(postgres_url, settings)),
        )

    @property
    def engine(self) -> sa.Engine:
        with self._lock:
            if self._engine is None:
                self._engine = make_engine(self.postgres_url, pool_size=8, max_overflow=8, pool_timeout=10)
            return self._engine

    @property
    def redis(self) -> redis_lib.Redis:
        with self._lock:
            if self._redis is None:
                self._redis = redis_lib.Redis.from_url(
                    self.redis_url, socket_timeout=3, socket_connect_timeout=3, health_check_interval=30
                )
            return self._redis

    @property
    def rate_limiter(self) -> RateLimiter:
        return RateLimiter(self.redis)

    @property
    def budget(self) -> TokenBudget:
        return TokenBudget(self.redis, self.engine, self.config.usage_cache_s)

    def retriever(self) -> Retriever:
        """Built on the first search: loading the embedding model takes seconds."""
        with self._retriever_lock:
            if self._retriever is None:
                self._retriever = self.retriever_factory()
            return self._retriever

    @property
    def launcher(self) -> DirectLauncher:
        """The GraphQL launcher of the direct path (config.launch == "direct")."""
        from agentflow_dagster.api.direct import DirectLauncher

        return DirectLauncher(
            self.config.dagster_graphql_url,
            location=self.config.dagster_location,
            repository=self.config.dagster_repository,
            redis=self.redis,
            timeout_s=self.config.kafka_timeout_s * 3,
            specs=self.specs,
        )

    def warm_up(self) -> None:
        """Build the retriever now; a failure is only logged, the first search retries."""
        try:
            self.retriever()
        except Exception as exc:  # the search endpoint reports it as 503 when it matters
            log.warning("retriever warm-up failed: %s", type(exc).__name__)

    def _get_producer(self) -> KafkaProducer:
        with self._lock:
            if self._producer is None:
                timeout_ms = int(self.config.kafka_timeout_s * 1000)
                self._producer = self.kafka.producer(
                    max_block_ms=timeout_ms, bootstrap_timeout_ms=timeout_ms, linger_ms=0
                )
            return self._producer

    def publish(self, topic: str, key: str, value: bytes, headers: dict[str, str] | None = None) -> None:
        """Send one record and wait for the broker's acknowledgement (acks=all)."""
        try:
            future = self._get_producer().send(
                topic,
                key=key.encode(),
                value=value,
                headers=[(k, v.encode()) for k, v in (headers or {}).items()],
            )
            future.get(timeout=self.config.kafka_timeout_s)
        except Exception as exc:  # any broker failure means "not published": the caller answers 503
            raise Unavailable(
                f"Kafka at {self.kafka.bootstrap_servers} did not accept {topic}: {exc}"
            ) from exc

    def audit(self, actor: str, action: str, plan_id: str | None, subject: str, **detail: Any) -> None:
        """Append one audit-log entry."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO audit_log (plan_id, actor, action, subject, detail) "
                    "VALUES (:p, :a, :act, :s, CAST(:d AS jsonb))"
                ),
                {"p": plan_id, "a": actor, "act": action, "s": subject, "d": json.dumps(detail, default=str)},
            )

    def close(self) -> None:
        """Flush and close every client that was opened."""
        with self._lock:
            if self._producer is not None:
                self._producer.close(timeout=5)
                self._producer = None
            if self._redis is not None:
                self._redis.close()
                self._redis = None
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None
        with self._retriever_lock:
            if self._retriever is not None:
                self._retriever.store.close()
                self._retriever = None
