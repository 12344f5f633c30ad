"""What durability costs the broker: Tansu in memory vs Tansu on its s3:// engine in SeaweedFS.

    python bench/broker_bench.py [--records 2000] [--events 30]

Both brokers are started with the stack's own code (agentflow_dagster/stack/services.py) on free loopback
ports, one after the other, so they never share the CPU. Per broker:
- produce: N 1 KiB records over 4 partitions, batched (acks=all, linger 5 ms): records/s;
- produce one at a time: send().get() per record (acks=all): latency p50/p99;
- consume: the N records from offset 0 by assign + seek: records/s;
- event -> sensor: one event every 0.25 s read by the request sensor's reader (KafkaTopicReader with its
  long poll, as in a tick): time from the producer's ack to the handler, p50/p99. This is the broker's
  share of the event -> run latency; the Dagster part after it does not depend on the broker's storage.
Writes bench/results/broker_bench.{json,md}.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common import machine, md_table, summary, write_results

from agentflow_dagster.stack import services
from resources.kafka import KafkaResource
from sensors.kafka_reader import KafkaRecord, KafkaTopicReader, ReaderConfig
from tests.support.seaweed import SeaweedServer

LOG = logging.getLogger("broker_bench")
PARTITIONS = 4


@contextmanager
def broker(kind: str, data: Path) -> Iterator[KafkaResource]:
    """Tansu in memory, or on S3 in a SeaweedFS of its own; both stopped by pid afterwards."""
    s3: SeaweedServer | None = None
    env = None
    if kind == "s3":
        s3 = SeaweedServer(data).start()
        s3.store(buckets=(services.BROKER_BUCKET,))
        env = services.s3_storage_env(s3.endpoint, s3.credentials)
    svc = services.start_kafka(data, services.free_port(), storage_env=env)
    try:
        yield KafkaResource(bootstrap_servers=svc.address)
    finally:
        services.stop_pid(svc.pid)
        if s3 is not None:
            s3.stop()


def produce_batched(kafka: KafkaResource, topic: str, n: int) -> float:
    value = b"x" * 1024
    producer = kafka.producer()
    started = time.perf_counter()
    for i in range(n):
        producer.send(topic, value=value, partition=i % PARTITIONS)
    producer.flush()
    took = time.perf_counter() - started
    producer.close()
    return n / took


def produce_one_by_one(kafka: KafkaResource, topic: str, n: int) -> list[float]:
    producer = kafka.producer(linger_ms=0)
    latencies = []
    for i in range(n):
        started = time.perf_counter()
        producer.send(topic, value=b"y" * 1024, partition=i % PARTITIONS).get(timeout=15)
        latencies.append((time.perf_counter() - started) * 1000)
    producer.close()
    return latencies


def consume_all(kafka: KafkaResource, topic: str, n: int) -> float:
    from kafka import TopicPartition

    consumer = kafka.consumer()
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, 0)
    got, started = 0, time.perf_counter()
    deadline = started + 120
    while got < n and time.perf_counter() < deadline:
        for batch in consumer.poll(timeout_ms=200).values():
            got += len(batch)
    took = time.perf_counter() - started
    consumer.close()
    if got < n:
        raise RuntimeError(f"consumed {got} of {n} records of {topic} in 120 s")
    return n / took


def event_to_reader(kafka: KafkaResource, topic: str, events: int) -> list[float]:
    """Ack -> handler latency of the sensor's reader with its long poll, ticks back to back."""
    acked: dict[bytes, float] = {}
    seen: dict[bytes, float] = {}
    stop = threading.Event()
    reader = KafkaTopicReader(
        topic, kafka.consumer, kafka.producer, LOG, ReaderConfig(max_seconds=10, wait_seconds=3)
    )

    def ticks() -> None:
        cursor: str | None = None
        while not stop.is_set():
            cursor = reader.read(cursor, lambda r: _seen(seen, r)).cursor

    cursor_thread = threading.Thread(target=ticks, daemon=True)
    producer = kafka.producer(linger_ms=0)
    # The first tick starts at the log's end: a warm-up record makes its cursor cover the partition.
    producer.send(topic, value=b"warm-up", partition=0).get(timeout=15)
    cursor_thread.start()
    time.sleep(2)
    for i in range(events):
        key = f"ev{i}".encode()
        producer.send(topic, value=key, partition=i % PARTITIONS).get(timeout=15)
        acked[key] = time.perf_counter()
        time.sleep(0.25)
    deadline = time.perf_counter() + 30
    while len(seen) < events + 1 and time.perf_counter() < deadline:
        time.sleep(0.1)
    stop.set()
    cursor_thread.join(timeout=20)
    producer.close()
    missing = [k for k in acked if k not in seen]
    if missing:
        raise RuntimeError(f"the reader never handled {len(missing)} of {events} events")
    return [max(0.0, (seen[k] - acked[k]) * 1000) for k in acked]


def _seen(seen: dict[bytes, float], record: KafkaRecord) -> None:
    seen.setdefault(record.value, time.perf_counter())


def run(kind: str, records: int, events: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"broker-bench-{kind}-") as tmp, broker(kind, Path(tmp)) as kafka:
        kafka.ensure_topics(["bench.batched", "bench.single", "bench.events"], partitions=PARTITIONS)
        produce_rate = produce_batched(kafka, "bench.batched", records)
        single = produce_one_by_one(kafka, "bench.single", min(records, 200))
        consume_rate = consume_all(kafka, "bench.batched", records)
        latency = event_to_reader(kafka, "bench.events", events)
    return {
        "produce_records_per_s": round(produce_rate),
        "produce_one_ms": summary(single),
        "consume_records_per_s": round(consume_rate),
        "event_to_reader_ms": summary(latency),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--events", type=int, default=30)
    args = parser.parse_args()
    results = {kind: run(kind, args.records, args.events) for kind in ("memory", "s3")}
    rows = []
    for kind, r in results.items():
        rows.append(
            [
                "memory://" if kind == "memory" else "s3:// (SeaweedFS)",
                r["produce_records_per_s"],
                r["produce_one_ms"]["p50"],
                r["produce_one_ms"]["p99"],
                r["consume_records_per_s"],
                r["event_to_reader_ms"]["p50"],
                r["event_to_reader_ms"]["p99"],
            ]
        )
    mem, s3 = results["memory"], results["s3"]
    ratio = {
        "produce_batched": round(s3["produce_records_per_s"] / mem["produce_records_per_s"], 3),
        "consume": round(s3["consume_records_per_s"] / mem["consume_records_per_s"], 3),
    }
    data = {"machine": machine(), "records": args.records, "events": args.events, "results": results}
    data["s3_over_memory"] = ratio
    headers = [
        "Tansu storage",
        "produce rec/s (batched, 1 KiB)",
        "produce one p50 ms",
        "p99 ms",
        "consume rec/s",
        "event -> sensor p50 ms",
        "p99 ms",
    ]
    md = (
        f"# Broker: Tansu in memory vs on S3\n\n{data['machine']['host']}, {data['machine']['at']}, "
        f"load {data['machine']['loadavg_at_start']} ({data['machine']['note']}).\n\n"
        + md_table(headers, rows)
        + f"\n\ns3 / memory: batched produce x{ratio['produce_batched']}, consume x{ratio['consume']}.\n"
    )
    write_results("broker_bench", data, md)
    print(md)


if __name__ == "__main__":
    main()
