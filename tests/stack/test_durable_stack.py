"""Tansu on SeaweedFS: topics, records, committed offsets and objects survive `agentflow down` / `up`.

An event produced while the stack is up but before its sensor read it is run once after the restart.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.structs import OffsetAndMetadata

from agentflow_dagster import names
from agentflow_dagster.stack import services
from resources.object_store import ObjectStoreResource
from tests.support.live_stack import LiveStack, request, traceparent

pytestmark = [pytest.mark.stack, pytest.mark.slow]
PROBE_TOPIC = "durability.probe"
GROUP = "durability-probe"


def _committed(stack: LiveStack) -> int | None:
    consumer = KafkaConsumer(bootstrap_servers=[stack.bootstrap], group_id=GROUP, enable_auto_commit=False)
    try:
        return consumer.committed(TopicPartition(PROBE_TOPIC, 2))
    finally:
        consumer.close()


def test_event_topics_offsets_and_objects_survive_down_and_up(tmp_path: Path) -> None:
    stack = LiveStack.create(tmp_path / "af")
    try:
        stack.up()
        # The sensor must not read the event before `down`: its daemon goes first.
        services.stop_pid(stack.pids()["dagster_daemon"])
        req = request("summarize_with_fallback", {"document": "Tansu keeps its log in S3. SeaweedFS is S3."})
        stack.produce([(3, req.model_dump_json().encode(), traceparent())])

        admin = KafkaAdminClient(bootstrap_servers=[stack.bootstrap])
        admin.create_topics([NewTopic(PROBE_TOPIC, 4, 1)])
        admin.close()
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=[stack.bootstrap], acks="all")
        for i in range(12):
            producer.send(PROBE_TOPIC, value=f"probe {i}".encode(), partition=i % 4).get(timeout=15)
        producer.close()
        consumer = KafkaConsumer(
            bootstrap_servers=[stack.bootstrap], group_id=GROUP, enable_auto_commit=False
        )
        consumer.commit({TopicPartition(PROBE_TOPIC, 2): OffsetAndMetadata(2, "", -1)})
        consumer.close()
        store = ObjectStoreResource(
            endpoint=f"127.0.0.1:{stack.ports['s3']}",
            credentials_file=str(services.s3_credentials_path(stack.data_dir)),
        ).build()
        store.put(names.BUCKET_ARTIFACTS, "durable/kept.json", b'{"kept": true}')
        pids = stack.pids()

        stack.down()
        assert not any(services.pid_alive(p) for p in pids.values()), pids
        stack.up()

        admin = KafkaAdminClient(bootstrap_servers=[stack.bootstrap])
        try:
            assert {*names.TOPICS, PROBE_TOPIC} <= set(admin.list_topics())
        finally:
            admin.close()
        probe = stack.read_topic(PROBE_TOPIC, lambda v: len(v) >= 12, timeout=60)
        assert sorted(probe) == sorted(f"probe {i}".encode() for i in range(12))
        assert _committed(stack) == 2
        assert store.get(names.BUCKET_ARTIFACTS, "durable/kept.json") == b'{"kept": true}'

        results = stack.results([req.event_id], timeout=600)
        assert [r.status for r in results[req.event_id]] == ["succeeded"]
        assert len(stack.runs_by_event([req.event_id])[req.event_id]) == 1
        assert stack.history([req.event_id]) == {req.event_id: "succeeded"}
    finally:
        stack.down()
