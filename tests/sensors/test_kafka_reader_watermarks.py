"""The reader stays exact when the broker's high watermarks are wrong (Tansu reports end offsets far below
what a partition holds, most of all on its s3:// engine): "caught up" comes from polls, never from them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from agentflow_dagster.stack import services
from resources.kafka import KafkaResource
from sensors.kafka_reader import KafkaRecord, KafkaTopicReader, ReaderConfig, TopicCursor
from tests.sensors.conftest import FAST, LOG
from tests.support.seaweed import SeaweedServer

PER_PARTITION = 25


@pytest.fixture(scope="module")
def durable_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaResource]:
    """Tansu on its s3:// engine in a SeaweedFS, as `agentflow up` runs it."""
    data = tmp_path_factory.mktemp("durable-broker")
    s3 = SeaweedServer(data).start()
    broker: services.Service | None = None
    try:
        s3.store(buckets=(services.BROKER_BUCKET,))
        env = services.s3_storage_env(s3.endpoint, s3.credentials)
        broker = services.start_kafka(data, services.free_port(), storage_env=env)
        yield KafkaResource(bootstrap_servers=broker.address)
    finally:
        if broker is not None:
            services.stop_pid(broker.pid)
        s3.stop()


def produce_batched(kafka: KafkaResource, partitions: int = 4) -> tuple[str, list[bytes]]:
    """PER_PARTITION records per partition in one batch each (what makes the watermarks go wrong)."""
    topic = f"test.watermarks.{uuid.uuid4().hex[:8]}"
    kafka.ensure_topics([topic, f"{topic}.dlq"], partitions=partitions)
    values = [f"w{i}".encode() for i in range(PER_PARTITION * partitions)]
    producer = kafka.producer()
    for i, value in enumerate(values):
        producer.send(topic, value=value, partition=i % partitions)
    producer.flush()
    producer.close()
    return topic, values


def reported_ends(kafka: KafkaResource, topic: str) -> dict[int, int]:
    consumer = kafka.consumer()
    try:
        tps = [TopicPartition(topic, p) for p in range(4)]
        return {tp.partition: end for tp, end in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def read_until_idle(
    kafka: KafkaResource, topic: str, cursor: str | None, factory: Any = None, ticks: int = 10
) -> tuple[list[KafkaRecord], str, list[dict[int, str]]]:
    """Ticks from `cursor` until one handles nothing; every record handled and every reset seen."""
    reader = KafkaTopicReader(topic, factory or kafka.consumer, kafka.producer, LOG, FAST)
    seen: list[KafkaRecord] = []
    resets = []
    for _ in range(ticks):
        result = reader.read(cursor, seen.append)
        cursor = result.cursor
        resets.append(result.resets)
        assert result.error is None
        if result.caught_up and result.handled == 0:
            return seen, cursor, resets
    raise AssertionError(f"not caught up after {ticks} ticks")


def test_durable_tansu_under_reports_and_the_reader_reads_everything_once(
    durable_kafka: KafkaResource,
) -> None:
    topic, values = produce_batched(durable_kafka)
    ends = reported_ends(durable_kafka, topic)
    print(f"\nTansu s3:// reported end offsets {ends} for {PER_PARTITION} records per partition")
    seen, cursor, resets = read_until_idle(durable_kafka, topic, None)
    assert sorted(r.value for r in seen) == sorted(values)
    assert len(seen) == len(values)  # none twice
    assert TopicCursor.parse(cursor).offsets == dict.fromkeys(range(4), PER_PARTITION)
    assert all(r == {} for r in resets), resets  # a cursor beyond the reported end is not a reset

    # More records on top, one at a time: read from the cursor, still nothing lost or repeated.
    producer = durable_kafka.producer()
    for i in range(6):
        producer.send(topic, value=f"late{i}".encode(), partition=i % 2).get(timeout=15)
    producer.close()
    later, cursor, resets = read_until_idle(durable_kafka, topic, cursor)
    assert sorted(r.value for r in later) == sorted(f"late{i}".encode() for i in range(6))
    assert all(r == {} for r in resets), resets
    assert TopicCursor.parse(cursor).offsets == {0: 28, 1: 28, 2: 25, 3: 25}


class LyingEnds(KafkaConsumer):  # type: ignore[misc]
    """A real consumer whose broker "reports" end offset 1 everywhere (what Tansu was seen answering)."""

    def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(partitions, 1)

    def highwater(self, partition: TopicPartition) -> int | None:
        real = super().highwater(partition)
        return None if real is None else min(real, 1)


def lying_consumer(kafka: KafkaResource) -> LyingEnds:
    """Configured as KafkaResource.consumer() configures the sensors' consumers."""
    return LyingEnds(
        bootstrap_servers=kafka.bootstrap_servers.split(","),
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="none",
        consumer_timeout_ms=1000,
        fetch_max_wait_ms=100,
    )


def test_a_wrong_end_offset_never_counts_as_caught_up(durable_kafka: KafkaResource) -> None:
    """End offsets of 1 for partitions of 25: the reader still reads all 100, then resumes without a reset."""
    topic, values = produce_batched(durable_kafka)

    def lying() -> KafkaConsumer:
        return lying_consumer(durable_kafka)

    seen, cursor, resets = read_until_idle(durable_kafka, topic, None, factory=lying)
    assert sorted(r.value for r in seen) == sorted(values) and len(seen) == len(values)
    assert all(r == {} for r in resets), resets
    # From a cursor far beyond the "end", the record before it is re-read, found, and not reset.
    again, cursor2, resets = read_until_idle(durable_kafka, topic, cursor, factory=lying, ticks=2)
    assert again == [] and cursor2 == cursor and all(r == {} for r in resets), resets


def test_wrong_ends_with_skip_to_latest_still_never_hand_over_old_records(
    durable_kafka: KafkaResource,
) -> None:
    """A cursor that does not match the log (recreated topic) under skip_to_latest with a lying end: the
    records past the reported end are drained as skipped, not handed to the handler."""
    topic, _ = produce_batched(durable_kafka)
    foreign = TopicCursor(offsets=dict.fromkeys(range(4), 10), marks=dict.fromkeys(range(4), "0" * 16)).dump()
    reader = KafkaTopicReader(
        topic,
        lambda: lying_consumer(durable_kafka),
        durable_kafka.producer,
        LOG,
        ReaderConfig(idle_seconds=0.3, idle_polls=2, confirm_seconds=1.0, on_reset="skip_to_latest"),
    )
    handled: list[KafkaRecord] = []
    result = reader.read(foreign, handled.append)
    assert set(result.resets) == {0, 1, 2, 3}
    assert handled == []
    assert TopicCursor.parse(result.cursor).offsets == dict.fromkeys(range(4), PER_PARTITION)
