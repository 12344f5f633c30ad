"""Kafka: producer, consumer and admin clients for any Kafka-protocol cluster."""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

import dagster as dg

from agentflow_dagster.clients import KafkaClients

if TYPE_CHECKING:
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer


_SHARED_PRODUCERS: dict[tuple[int, str, int, str], KafkaProducer] = {}
_SHARED_LOCK = threading.Lock()


class KafkaResource(dg.ConfigurableResource):
    """Factory for kafka-python clients (`agentflow_dagster.clients.KafkaClients`); callers close what
    they open."""

    bootstrap_servers: str = "127.0.0.1:9092"
    request_timeout_ms: int = 10_000
    client_id: str = "agentflow"

    @property
    def clients(self) -> KafkaClients:
        return KafkaClients(self.bootstrap_servers, self.request_timeout_ms, self.client_id)

    def producer(self, **overrides: object) -> KafkaProducer:
        """An idempotence-minded producer: acks=all, bounded retries, ordered per partition."""
        return self.clients.producer(**overrides)

    def shared_producer(self) -> KafkaProducer:
        """The process's producer for this cluster (thread-safe, kept open): for sensors that publish on
        many ticks, where a producer per tick cost its connection and metadata round trips. Keyed by
        pid: a forked process never uses its parent's. A caller whose send failed drops it
        (`drop_shared_producer`) so the next one starts afresh."""
        key = (os.getpid(), self.bootstrap_servers, self.request_timeout_ms, self.client_id)
        with _SHARED_LOCK:
            producer = _SHARED_PRODUCERS.get(key)
            if producer is None:
                producer = _SHARED_PRODUCERS[key] = self.producer()
            return producer

    def drop_shared_producer(self) -> None:
        key = (os.getpid(), self.bootstrap_servers, self.request_timeout_ms, self.client_id)
        with _SHARED_LOCK:
            producer = _SHARED_PRODUCERS.pop(key, None)
        if producer is not None:
            producer.close(timeout=5)

    def consumer(self, **overrides: object) -> KafkaConsumer:
        """A consumer without group management: sensors assign and seek from their cursor."""
        return self.clients.consumer(**overrides)

    def admin(self) -> KafkaAdminClient:
        return self.clients.admin()

    def ensure_topics(self, topics: list[str] | tuple[str, ...], partitions: int) -> list[str]:
        """Create missing topics; returns the names created."""
        return self.clients.ensure_topics(topics, partitions)

    def partitions_for(self, topic: str) -> list[int]:
        return self.clients.partitions_for(topic)
