"""Kafka: producer, consumer and admin clients for any Kafka-protocol cluster."""

from __future__ import annotations

import contextlib
from typing import Any

import dagster as dg
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError


class KafkaResource(dg.ConfigurableResource):
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
        return KafkaAdminClient(**self._common(), bootstrap_timeout_ms=self.request_timeout_ms)

    def ensure_topics(self, topics: list[str] | tuple[str, ...], partitions: int) -> list[str]:
        """Create missing topics; returns the names created."""
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
