"""The document sensor on the session broker: partitions, one run per collection, bad events to the DLQ."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import replace

import dagster as dg
import pytest
import sqlalchemy as sa

from agentflow_dagster import names
from agentflow_dagster.events import DeadLetter
from agentflow_dagster.settings import Settings
from assets.rag import COLLECTIONS, rag_index_job
from resources.kafka import KafkaResource
from resources.postgres import PostgresResource
from sensors.documents import make_document_sensor
from tests.sensors.conftest import FAST, end_cursor, read_all


@pytest.fixture(scope="module")
def kafka(kafka_bootstrap: str) -> KafkaResource:
    return KafkaResource(bootstrap_servers=kafka_bootstrap)


@pytest.fixture(scope="module")
def postgres(pg_url: str) -> PostgresResource:
    return PostgresResource(url=pg_url)


@pytest.fixture()
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def event(event_id: str, collection: str, key: str, action: str = "add") -> bytes:
    return json.dumps({"event_id": event_id, "collection": collection, "key": key, "action": action}).encode()


def tick(
    sensor: dg.SensorDefinition,
    instance: dg.DagsterInstance,
    kafka: KafkaResource,
    postgres: PostgresResource,
    cursor: str,
) -> dg.SensorResult:
    resources = {"kafka": kafka, "postgres": postgres}
    with dg.build_sensor_context(cursor=cursor, instance=instance, resources=resources) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def test_events_become_partitions_and_one_run_per_collection(
    kafka: KafkaResource, postgres: PostgresResource, instance: dg.DagsterInstance
) -> None:
    sensor = make_document_sensor(rag_index_job, COLLECTIONS, reader_config=replace(FAST, max_records=50),
                                  settings=Settings(max_event_bytes=2048))  # fmt: skip
    tag = uuid.uuid4().hex[:6]
    a, b = f"docs_{tag}", f"wiki_{tag}"
    cursor = end_cursor(kafka, names.TOPIC_DOCUMENTS)
    dlq = end_cursor(kafka, names.TOPIC_DOCUMENTS_DLQ)
    producer = kafka.producer()
    values = [
        event(f"e1-{tag}", a, f"{a}/one.md"),
        b"{not json",
        event(f"e2-{tag}", b, f"{b}/x.txt"),
        event(f"e3-{tag}", a, f"{b}/stolen.txt"),  # key outside its collection
        event(f"e4-{tag}", a, f"{a}/one.md", "update"),
        event(f"e5-{tag}", a, f"{a}/../etc/passwd"),
        json.dumps(
            {"event_id": f"e6-{tag}", "collection": a, "key": f"{a}/big.txt", "pad": "x" * 3000}
        ).encode(),
    ]
    for v in values:
        producer.send(names.TOPIC_DOCUMENTS, key=a.encode(), value=v)  # one partition keeps the order
    producer.flush()
    producer.close()

    result = tick(sensor, instance, kafka, postgres, cursor)
    runs = {r.partition_key: r for r in result.run_requests or []}
    assert set(runs) == {a, b}
    assert runs[a].run_key == f"e4-{tag}" and runs[a].tags[names.TAG_EVENT_ID] == f"e4-{tag}"
    assert runs[a].tags["agentflow/event_count"] == "2" and runs[b].run_key == f"e2-{tag}"
    (request,) = result.dynamic_partitions_requests or []
    assert isinstance(request, dg.AddDynamicPartitionsRequest)
    assert request.partitions_def_name == COLLECTIONS and sorted(request.partition_keys) == [a, b]

    letters = [
        DeadLetter.model_validate_json(r.value) for r in read_all(kafka, names.TOPIC_DOCUMENTS_DLQ, dlq)
    ]
    reasons = sorted(letter.reason for letter in letters)
    assert len(reasons) == 4, reasons
    assert reasons[0].startswith(f"invalid object key '{a}/../etc/passwd'")
    assert reasons[1].startswith(f"key '{b}/stolen.txt' is outside its collection")
    assert reasons[2].startswith("not JSON") and reasons[3].startswith("oversized: ")
    # Each dead letter is one audit row, which the DLQ metric counts.
    with postgres.engine.connect() as conn:
        audited = (
            conn.execute(
                sa.text(
                    "SELECT detail->>'source' FROM audit_log WHERE action = 'event.dead_lettered' "
                    "AND actor = 'document_sensor' AND detail->>'dlq_topic' = :t "
                    "AND detail->>'source' = ANY(:s)"
                ),
                {
                    "t": names.TOPIC_DOCUMENTS_DLQ,
                    "s": [f"{x.source_topic}[{x.partition}]@{x.offset}" for x in letters],
                },
            )
            .scalars()
            .all()
        )
    assert len(audited) == 4, audited

    # The cursor moved past everything: a second tick with it requests nothing new.
    instance.add_dynamic_partitions(COLLECTIONS, [a, b])
    again = tick(sensor, instance, kafka, postgres, result.cursor or "")
    assert not again.run_requests and not again.dynamic_partitions_requests
