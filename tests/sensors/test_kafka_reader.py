"""The cursor-based reader against a real Tansu broker: nothing lost, nothing twice, resets and the DLQ."""

from __future__ import annotations

import base64
import dataclasses
import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from agentflow_dagster.events import DeadLetter
from agentflow_dagster.stack import services
from resources.kafka import KafkaResource
from resources.postgres import PostgresResource
from sensors.kafka_reader import (
    BadRecord,
    CursorResetError,
    KafkaRecord,
    KafkaTopicReader,
    ReaderConfig,
    ResetPolicy,
    TopicCursor,
)
from tests.sensors.conftest import FAST, LOG, end_cursor, read_all


def new_topic(kafka: KafkaResource) -> str:
    topic = f"test.reader.{uuid.uuid4().hex[:8]}"
    kafka.ensure_topics([topic, f"{topic}.dlq"], partitions=4)
    return topic


def produce(kafka: KafkaResource, topic: str, values: list[bytes], batch: bool = True) -> None:
    """Spread values over the 4 partitions; batched sends make Tansu under-report end offsets."""
    producer = kafka.producer()
    for i, value in enumerate(values):
        producer.send(topic, value=value, partition=i % 4, headers=[("h", b"v")])
        if not batch:
            producer.flush()
    producer.flush()
    producer.close()


def tick(kafka: KafkaResource, topic: str, cursor: str | None, handle, config: ReaderConfig = FAST):  # type: ignore[no-untyped-def]
    return KafkaTopicReader(topic, kafka.consumer, kafka.producer, LOG, config).read(cursor, handle)


def test_budget_smaller_than_backlog_loses_and_repeats_nothing(kafka: KafkaResource) -> None:
    topic = new_topic(kafka)
    values = [f"m{i}".encode() for i in range(53)]
    produce(kafka, topic, values)
    seen: list[bytes] = []
    cursor, ticks = None, 0
    while True:
        result = tick(kafka, topic, cursor, lambda r: seen.append(r.value), replace(FAST, max_records=7))
        cursor, ticks = result.cursor, ticks + 1
        if result.caught_up and result.handled == 0:
            break
        assert ticks < 30
    assert sorted(seen) == sorted(values)
    assert ticks >= 53 // 7
    assert TopicCursor.parse(cursor).offsets == {0: 14, 1: 13, 2: 13, 3: 13}

    # Later events continue from the cursor; re-reading at the end never resets (Tansu's low watermarks).
    produce(kafka, topic, [b"late0", b"late1"], batch=False)
    for _ in range(3):
        result = tick(kafka, topic, cursor, lambda r: seen.append(r.value))
        assert result.resets == {} and result.caught_up
        cursor = result.cursor
    assert seen[-2:] == [b"late0", b"late1"] and len(seen) == 55


def test_long_poll_returns_once_an_arrival_is_handled_and_waits_out_an_empty_tick(
    kafka: KafkaResource,
) -> None:
    """wait_seconds: an empty tick polls on for the window; a record arriving inside it is handled
    and the tick returns right after (partitions idle again), with the cursor past that record."""
    import threading
    import time

    topic = new_topic(kafka)
    cursor = end_cursor(kafka, topic)
    config = replace(FAST, wait_seconds=6.0)

    started = time.monotonic()
    empty = tick(kafka, topic, cursor, lambda r: None, replace(FAST, wait_seconds=1.5))
    assert empty.caught_up and empty.handled == 0
    assert time.monotonic() - started >= 1.5, "an empty tick polls for the whole window"

    seen: list[tuple[bytes, float]] = []
    sender = threading.Timer(1.0, produce, args=(kafka, topic, [b"late"]))
    started = time.monotonic()
    sender.start()
    try:
        result = tick(kafka, topic, empty.cursor, lambda r: seen.append((r.value, time.monotonic())), config)
    finally:
        sender.join()
    took = time.monotonic() - started
    assert [v for v, _ in seen] == [b"late"] and result.handled == 1 and result.caught_up
    assert took < 4.0, f"the tick returned {took:.1f} s after its start, not at the end of the 6 s window"
    # The next tick starts after the record: nothing again.
    again = tick(kafka, topic, result.cursor, lambda r: seen.append((r.value, 0.0)))
    assert again.handled == 0 and len(seen) == 1


def test_bad_records_go_to_the_dlq_and_do_not_stall(kafka: KafkaResource) -> None:
    topic = new_topic(kafka)
    dlq_cursor = end_cursor(kafka, f"{topic}.dlq")
    produce(kafka, topic, [b"ok0", b"\xffbad1", b"ok2", b"ok3", b"ok4", b"\xffbad5"])

    def handle(record: KafkaRecord) -> None:
        if record.value.startswith(b"\xff"):
            raise BadRecord(f"bad at {record.offset}")

    result = tick(kafka, topic, None, handle)
    assert (result.handled, result.dead_lettered, result.caught_up) == (4, 2, True)
    letters = [DeadLetter.model_validate_json(r.value) for r in read_all(kafka, f"{topic}.dlq", dlq_cursor)]
    assert sorted((d.partition, d.offset) for d in letters) == [(1, 0), (1, 1)]
    for letter in letters:
        assert base64.b64decode(letter.value_b64).startswith(b"\xffbad")
        assert letter.reason == f"bad at {letter.offset}" and letter.source_topic == topic
        assert letter.headers == {"h": "v"}
    assert TopicCursor.parse(result.cursor).offsets == {0: 2, 1: 2, 2: 1, 3: 1}


def test_a_record_dead_lettered_by_an_unsaved_tick_is_not_sent_twice(
    kafka: KafkaResource, postgres: PostgresResource
) -> None:
    """A tick dead-letters and audits a record, but its cursor is never saved (daemon killed mid-tick):
    re-reading from the old cursor finds the audit row and writes no second letter."""
    from sensors.workflow_requests import dead_letter_hooks, dead_letter_recorded

    topic = new_topic(kafka)
    dlq_cursor = end_cursor(kafka, f"{topic}.dlq")
    produce(kafka, topic, [b"\xffbad0", b"ok1"])

    bad_records: list[KafkaRecord] = []

    def handle(record: KafkaRecord) -> None:
        if record.value.startswith(b"\xff"):
            bad_records.append(record)
            raise BadRecord("bad")

    def reader() -> KafkaTopicReader:
        return KafkaTopicReader(
            topic, kafka.consumer, kafka.producer, LOG, FAST, **dead_letter_hooks(postgres, "test"),
        )  # fmt: skip

    first = reader().read(None, handle)  # its cursor is "lost"
    again = reader().read(None, handle)
    assert (first.dead_lettered, again.dead_lettered) == (1, 1)
    assert again.cursor == first.cursor
    letters = read_all(kafka, f"{topic}.dlq", dlq_cursor)
    assert len(letters) == 1, "one letter for one bad record"
    (bad,) = [DeadLetter.model_validate_json(r.value) for r in letters]
    assert bad.offset == 0
    # Same coordinates, another record (a recreated log reuses offsets): not taken for the old letter.
    assert dead_letter_recorded(postgres, bad_records[0])
    other = dataclasses.replace(bad_records[0], value=b"\xffother", timestamp=bad_records[0].timestamp + 1)
    assert not dead_letter_recorded(postgres, other)


def test_handler_failure_stops_before_the_record_and_retries_it(kafka: KafkaResource) -> None:
    topic = new_topic(kafka)
    produce(kafka, topic, [b"a", b"b", b"c", b"d", b"e"])  # partition 0: a, e
    calls: list[bytes] = []

    def flaky(record: KafkaRecord) -> None:
        calls.append(record.value)
        if record.value == b"e" and calls.count(b"e") == 1:
            raise ConnectionError("postgres is down")

    first = tick(kafka, topic, None, flaky)
    assert isinstance(first.error, ConnectionError)
    assert TopicCursor.parse(first.cursor).offsets[0] == 1  # "e" at offset 1 not passed
    second = tick(kafka, topic, first.cursor, flaky)
    assert second.error is None and second.caught_up
    assert sorted(set(calls)) == [b"a", b"b", b"c", b"d", b"e"] and calls.count(b"e") == 2


@pytest.fixture()
def own_broker(tmp_path: Path) -> Iterator[tuple[Path, int, list[int]]]:
    """A Tansu broker this test may kill and restart on the same port (pids stopped at the end)."""
    port = services.free_port()
    pids = [services.start_kafka(tmp_path, port).pid]
    try:
        yield tmp_path, port, pids
    finally:
        for pid in pids:
            services.stop_pid(pid)


def restart(own_broker: tuple[Path, int, list[int]]) -> None:
    directory, port, pids = own_broker
    services.stop_pid(pids[-1])
    services.wait_for(lambda: not services.port_in_use(port), 10, "old broker to release its port")
    pids.append(services.start_kafka(directory, port).pid)


@pytest.mark.parametrize("policy", ["reset_to_earliest", "skip_to_latest", "fail"])
def test_broker_restart_is_detected_and_policy_followed(
    own_broker: tuple[Path, int, list[int]], policy: ResetPolicy
) -> None:
    kafka = KafkaResource(bootstrap_servers=f"127.0.0.1:{own_broker[1]}")
    topic = "restart.topic"
    kafka.ensure_topics([topic, f"{topic}.dlq"], partitions=4)
    produce(kafka, topic, [f"old{i}".encode() for i in range(10)])
    seen: list[bytes] = []
    cursor = tick(kafka, topic, None, lambda r: seen.append(r.value)).cursor
    assert len(seen) == 10
    cfg = replace(FAST, on_reset=policy)

    restart(own_broker)
    # Memory storage: the topic is gone until recreated; the cursor is kept meanwhile.
    gone = tick(kafka, topic, cursor, lambda r: seen.append(r.value), cfg)
    assert gone.cursor == cursor and gone.handled == 0
    kafka.ensure_topics([topic, f"{topic}.dlq"], partitions=4)
    # Partition 0 gets more records than the cursor had (only the fingerprint tells), 1 fewer, 2-3 none.
    # The old cursor is {0: 3, 1: 3, 2: 2, 3: 2}.
    producer = kafka.producer()
    for value, partition in [(b"new0", 0), (b"new1", 0), (b"new2", 0), (b"new3", 0), (b"new4", 1)]:
        producer.send(topic, value=value, partition=partition)
    producer.flush()
    producer.close()

    if policy == "fail":
        with pytest.raises(CursorResetError, match="does not match the broker's log"):
            tick(kafka, topic, cursor, lambda r: seen.append(r.value), cfg)
        return
    result = tick(kafka, topic, cursor, lambda r: seen.append(r.value), cfg)
    assert set(result.resets) == {0, 1, 2, 3}
    assert "not the one this cursor consumed" in result.resets[0]
    assert "no record at offset" in result.resets[1]
    offsets = TopicCursor.parse(result.cursor).offsets
    if policy == "reset_to_earliest":
        assert sorted(seen[10:]) == [b"new0", b"new1", b"new2", b"new3", b"new4"]
    else:
        # Skipped from the broker's (possibly low) end offset on, so at most the 5 new records.
        assert seen[10:] == [] and result.skipped <= 5
    assert offsets == {0: 4, 1: 1, 2: 0, 3: 0}
    # After the reset the cursor is valid again: new events flow, nothing resets.
    produce(kafka, topic, [b"after"])
    again = tick(kafka, topic, result.cursor, lambda r: seen.append(r.value), cfg)
    assert again.resets == {} and seen[-1] == b"after"
    assert json.loads(again.cursor)["offsets"]["0"] == 5
