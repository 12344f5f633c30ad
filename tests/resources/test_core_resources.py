"""Each core resource against its real server: a round trip, and the error when the server is down."""

from __future__ import annotations

import uuid
from pathlib import Path

import dagster as dg
import pytest
import redis
import sqlalchemy as sa

from agentflow_dagster import names
from agentflow_dagster.stack.services import free_port
from resources.kafka import KafkaResource
from resources.object_store import ObjectNotFound, ObjectStoreError, ObjectStoreResource, validate_key
from resources.postgres import PostgresResource
from resources.redis import RedisResource
from tests.support.seaweed import SeaweedServer


def test_postgres_round_trip_and_audit(pg_url: str) -> None:
    res = PostgresResource(url=pg_url)
    res.audit("tester", "probe", plan_id="plan-x", subject="s", n=1)
    with res.engine.begin() as conn:
        row = conn.execute(sa.text("SELECT actor, detail->>'n' FROM audit_log WHERE plan_id='plan-x'")).one()
        tables = {
            r[0] for r in conn.execute(sa.text("SELECT tablename FROM pg_tables WHERE schemaname='public'"))
        }
    assert tuple(row) == ("tester", "1")
    assert {"workflow_definitions", "workflow_runs", "task_runs", "audit_log", "llm_calls"} <= tables
    res.migrate()  # idempotent


def test_postgres_resource_builds_share_one_engine_per_process(pg_url: str) -> None:
    """Dagster builds resources for every sensor tick: the builds reuse one engine (no new connection
    per tick); a forked process gets its own, never its parent's sockets."""
    import os

    from dagster import build_init_resource_context

    first, second = PostgresResource(url=pg_url), PostgresResource(url=pg_url)
    with first.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
    first.setup_for_execution(build_init_resource_context())
    first.teardown_after_execution(build_init_resource_context())  # does not dispose the shared engine
    assert second.engine is first.engine
    opened = {"n": 0}

    def on_connect(*_: object) -> None:
        opened["n"] += 1

    sa.event.listen(second.engine, "connect", on_connect)
    try:
        with second.engine.connect() as conn:  # a pooled connection: no new one, no new server backend
            assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
    finally:
        sa.event.remove(second.engine, "connect", on_connect)
    assert opened["n"] == 0
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a new engine, then report whether it differs from the inherited one
        same = PostgresResource(url=pg_url).engine is second.engine
        os.write(write, b"same" if same else b"own")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 10) == b"own"


def test_postgres_down_names_the_address() -> None:
    port = free_port()
    res = PostgresResource(url=f"postgresql://postgres@127.0.0.1:{port}/x")
    with pytest.raises(sa.exc.OperationalError, match=str(port)), res.engine.connect():
        pass


def test_redis_round_trip(redis_url: str) -> None:
    res = RedisResource(url=redis_url)
    key = f"t:{uuid.uuid4().hex}"
    assert res.client.set(key, "v", nx=True, px=5000)
    assert not res.client.set(key, "w", nx=True, px=5000)
    assert res.client.get(key) == b"v"


def test_redis_down_raises_connection_error() -> None:
    res = RedisResource(url=f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5)
    with pytest.raises(redis.ConnectionError):
        res.client.ping()


def test_kafka_round_trip(kafka_bootstrap: str) -> None:
    from kafka import TopicPartition

    res = KafkaResource(bootstrap_servers=kafka_bootstrap)
    topic = f"t.{uuid.uuid4().hex[:8]}"
    assert res.ensure_topics([topic], partitions=2) == [topic]
    assert res.ensure_topics([topic], partitions=2) == []
    producer = res.producer()
    producer.send(topic, value=b"hello", partition=1, headers=[("traceparent", b"00-x")]).get(timeout=10)
    producer.close()
    consumer = res.consumer()
    tp = TopicPartition(topic, 1)
    consumer.assign([tp])
    consumer.seek(tp, 0)
    got = []
    for _ in range(50):  # bounded: the first poll after seek often returns nothing
        for records in consumer.poll(timeout_ms=200).values():
            got.extend(records)
        if got:
            break
    consumer.close()
    assert [(r.value, r.headers) for r in got] == [(b"hello", [("traceparent", b"00-x")])]
    assert set(names.TOPICS) <= set(res.admin().list_topics())
    shared = res.shared_producer()
    assert KafkaResource(bootstrap_servers=kafka_bootstrap).shared_producer() is shared
    res.drop_shared_producer()
    assert res.shared_producer() is not shared
    res.drop_shared_producer()


def test_kafka_down_raises() -> None:
    from kafka.errors import KafkaTimeoutError

    res = KafkaResource(bootstrap_servers=f"127.0.0.1:{free_port()}", request_timeout_ms=1000)
    with pytest.raises(KafkaTimeoutError, match="127.0.0.1"):
        res.admin()


def _exercise_store(res: ObjectStoreResource) -> None:
    store = res.build()
    store.ensure_bucket(names.BUCKET_DOCUMENTS)
    info = store.put(names.BUCKET_DOCUMENTS, "c1/a.txt", b"alpha")
    assert info.size == 5
    assert store.get(names.BUCKET_DOCUMENTS, "c1/a.txt") == b"alpha"
    info2 = store.put(names.BUCKET_DOCUMENTS, "c1/a.txt", b"beta")
    assert info2.version != info.version
    assert [o.key for o in store.list(names.BUCKET_DOCUMENTS, "c1/")] == ["c1/a.txt"]
    store.delete(names.BUCKET_DOCUMENTS, "c1/a.txt")
    with pytest.raises(ObjectNotFound):
        store.get(names.BUCKET_DOCUMENTS, "c1/a.txt")
    assert names.BUCKET_DOCUMENTS in store.list_buckets()


def test_local_object_store_round_trip(tmp_path: Path) -> None:
    _exercise_store(ObjectStoreResource(local_dir=str(tmp_path)))


def test_s3_object_store_round_trip(s3_server: SeaweedServer) -> None:
    """SeaweedFS through the keys file, as the platform reaches the embedded server."""
    _exercise_store(s3_server.resource())


def test_s3_wrong_keys_are_refused(s3_server: SeaweedServer) -> None:
    res = ObjectStoreResource(endpoint=s3_server.endpoint, access_key="nobody", secret_key="wrong-secret")
    with pytest.raises(ObjectStoreError, match=s3_server.endpoint):
        res.build().list_buckets()


def test_s3_missing_keys_file_names_the_file_and_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "seaweedfs" / "credentials.json"
    res = ObjectStoreResource(endpoint=f"127.0.0.1:{free_port()}", credentials_file=str(missing))
    with pytest.raises(ObjectStoreError, match=r"credentials\.json .*agentflow up"):
        res.build()


def test_no_endpoint_and_no_local_dir_is_refused() -> None:
    with pytest.raises(ValueError, match="AGENTFLOW_S3_ENDPOINT"):
        ObjectStoreResource().build()


def test_minio_down_is_object_store_error() -> None:
    res = ObjectStoreResource(endpoint=f"127.0.0.1:{free_port()}", access_key="a", secret_key="b")
    with pytest.raises(ObjectStoreError, match="127.0.0.1"):
        res.build().list_buckets()


@pytest.mark.parametrize("key", ["../x", "/abs", "a//b", "a/../b", "a/./b", "", "x\x00y"])
def test_object_keys_reject_traversal(key: str) -> None:
    with pytest.raises(ValueError, match="invalid object key"):
        validate_key(key)


def test_resources_build_inside_dagster(pg_url: str, redis_url: str) -> None:
    @dg.op
    def touch(postgres: PostgresResource, redis: RedisResource) -> int:
        redis.client.incr("touch")
        with postgres.engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT 41 + 1")).scalar_one())

    @dg.job
    def job() -> None:
        touch()

    result = job.execute_in_process(
        resources={"postgres": PostgresResource(url=pg_url), "redis": RedisResource(url=redis_url)}
    )
    assert result.success and result.output_for_node("touch") == 42
