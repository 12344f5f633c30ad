"""Kafka: producer, consumer and admin clients for any Kafka-protocol cluster."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

from agentflow_dagster.clients import KafkaClients
from agentflow_dagster.per_process import PerProcess

if TYPE_CHECKING:
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer


_PRODUCERS: PerProcess[KafkaProducer] = PerProcess()


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
        return _PRODUCERS.get(self._shared_key(), self.producer)

    def drop_shared_producer(self) -> None:
        producer = _PRODUCERS.pop(self._shared_key())
        if producer is not None:
            producer.close(timeout=5)

    def _shared_key(self) -> tuple[str, int, str]:
        return (self.bootstrap_servers, self.request_timeout_ms, self.client_id)

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
