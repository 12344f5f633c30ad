"""The clients the resources wrap, built from settings without importing Dagster.

`resources_env.build_resources` gives ops and sensors ConfigurableResources; the CLI builds the same
clients from the same settings here, so `agentflow status|submit|audit` start without Dagster (about
2-3 s of CPU on this machine). Both read addresses and rules from this module.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentflow_dagster.object_store import ObjectStore, build_store
from agentflow_dagster.settings import Settings

if TYPE_CHECKING:
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

OPENAI_URL = "https://api.openai.com/v1"


def postgres_url(s: Settings) -> str:
    """The app database: AGENTFLOW_POSTGRES_URL, else the local stack's."""
    return s.postgres_url or f"postgresql://postgres@127.0.0.1:{s.postgres_port}/agentflow"


def kafka_bootstrap(s: Settings) -> str:
    return s.kafka_bootstrap_servers or f"127.0.0.1:{s.kafka_port}"


def object_store_config(s: Settings) -> dict[str, Any]:
    """Where the object store is, without its keys (the resource passes those as EnvVars)."""
    return {
        # Always S3: AGENTFLOW_S3_ENDPOINT, else the embedded SeaweedFS with the keys `agentflow up` made.
        "endpoint": s.s3_endpoint or f"127.0.0.1:{s.s3_port}",
        "credentials_file": "" if s.s3_endpoint else str(s.data_path / "seaweedfs" / "credentials.json"),
        "secure": s.s3_secure,
    }


def object_store(s: Settings) -> ObjectStore:
    """The object store the resources use, keys from the environment or the credentials file."""
    return build_store(
        access_key=os.environ.get("AGENTFLOW_S3_ACCESS_KEY", ""),
        secret_key=os.environ.get("AGENTFLOW_S3_SECRET_KEY", ""),
        **object_store_config(s),
    )


def llm_endpoint(base_url: str, api_key: str) -> str:
    """Where LLM calls go: the base URL, api.openai.com with a key alone, '' (offline) with neither."""
    return (base_url or OPENAI_URL) if (base_url or api_key) else ""


@dataclass(frozen=True)
class KafkaClients:
    """Factory for kafka-python clients; callers close what they open."""

    bootstrap_servers: str = "127.0.0.1:9092"
    request_timeout_ms: int = 10_000
    client_id: str = "agentflow"

    def _common(self) -> dict[str, Any]:
        return {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "request_timeout_ms": self.request_timeout_ms,
            "client_id": self.client_id,
        }

    def producer(self, **overrides: Any) -> KafkaProducer:
        """An idempotence-minded producer: acks=all, bounded retries, ordered per partition."""
        from kafka import KafkaProducer

        cfg: dict[str, Any] = {
            **self._common(),
            "acks": "all",
            "retries": 5,
            "max_in_flight_requests_per_connection": 1,
            "linger_ms": 5,
        }
        cfg.update(overrides)
        return KafkaProducer(**cfg)

    def consumer(self, **overrides: Any) -> KafkaConsumer:
        """A consumer without group management: sensors assign and seek from their cursor."""
        from kafka import KafkaConsumer

        cfg: dict[str, Any] = {
            **self._common(),
            "enable_auto_commit": False,
            "group_id": None,
            "auto_offset_reset": "none",
            "consumer_timeout_ms": 1000,
            "fetch_max_wait_ms": 100,
        }
        cfg.update(overrides)
        return KafkaConsumer(**cfg)

    def admin(self) -> KafkaAdminClient:
        from kafka import KafkaAdminClient

        return KafkaAdminClient(**self._common(), bootstrap_timeout_ms=self.request_timeout_ms)

    def ensure_topics(self, topics: list[str] | tuple[str, ...], partitions: int) -> list[str]:
        """Create missing topics; returns the names created."""
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = self.admin()
        try:
            existing = set(admin.list_topics())
            missing = [t for t in topics if t not in existing]
            if missing:
                with contextlib.suppress(TopicAlreadyExistsError):
                    admin.create_topics([NewTopic(t, partitions, 1) for t in missing])
            return missing
        finally:
            admin.close()

    def partitions_for(self, topic: str) -> list[int]:
        consumer = self.consumer()
        try:
            return sorted(consumer.partitions_for_topic(topic) or [])
        finally:
            consumer.close()


def kafka_clients(s: Settings) -> KafkaClients:
    """The Kafka clients of the configured cluster."""
    return KafkaClients(bootstrap_servers=kafka_bootstrap(s))
