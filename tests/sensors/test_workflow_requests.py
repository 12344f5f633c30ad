"""The workflow request sensor on a real broker, Postgres and object store."""

from __future__ import annotations

import base64
import json
import math
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from agentflow_dagster import names
from agentflow_dagster.api.direct import run_tags
from agentflow_dagster.events import DeadLetter, WorkflowRequest, plan_id_for
from agentflow_dagster.limits import MAX_RUNTIME_TAG, TenantLimits, TenantQuotas, run_max_runtime_s
from agentflow_dagster.observability.metrics import DLQ_ACTION
from agentflow_dagster.settings import Settings
from agentflow_dagster.workflows.spec import WorkflowSpec
from resources.kafka import KafkaResource
from resources.object_store import ObjectStoreResource
from resources.postgres import PostgresResource
from sensors.workflow_requests import make_workflow_request_sensor, trace_id_from
from tests.sensors.conftest import FAST, end_cursor, read_all
from tests.sensors.jobs import EchoSpec, echo_flow, echo_run_config

TRACE = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE}-b7ad6b7169203331-01"
SETTINGS = Settings(max_event_bytes=4096, inline_input_limit=300)


def request(event_id: str, **overrides: Any) -> bytes:
    body = {"event_id": event_id, "workflow": "echo_flow", "inputs": {"question": f"q {event_id}"}}
    return json.dumps({**body, **overrides}).encode()


def produce(kafka: KafkaResource, items: list[tuple[bytes, bool]]) -> None:
    """(value, with traceparent) pairs, spread over all partitions."""
    producer = kafka.producer()
    for i, (value, traced) in enumerate(items):
        headers = [("traceparent", TRACEPARENT.encode())] if traced else []
        producer.send(names.TOPIC_REQUESTS, value=value, partition=i % 4, headers=headers)
    producer.flush()
    producer.close()


def _event_id(letter: DeadLetter) -> str:
    try:
        return str(json.loads(base64.b64decode(letter.value_b64))["event_id"])
    except ValueError:
        return "?"


Evaluate = Callable[..., list[dg.RunRequest]]


@pytest.fixture()
def sensor_for(
    kafka: KafkaResource,
    postgres: PostgresResource,
    object_store: ObjectStoreResource,
    dagster_instance: dg.DagsterInstance,
) -> Callable[..., Evaluate]:
    """A request sensor (echo_flow, given specs and quotas) ticked from the topic's current end."""

    def build(specs: dict[str, Any] | None = None, quotas: TenantQuotas | None = None) -> Evaluate:
        sensor = make_workflow_request_sensor(
            [echo_flow],
            specs or {"echo_flow": EchoSpec()},
            run_config=echo_run_config,
            reader_config=replace(FAST, max_records=9),
            settings=SETTINGS,
            quotas=quotas or TenantQuotas(daily_token_budget=0, tenant_limits={}),
        )
        resources = {"kafka": kafka, "postgres": postgres, "object_store": object_store}
        state = {"cursor": end_cursor(kafka, names.TOPIC_REQUESTS)}

        def run(max_ticks: int = 30) -> list[dg.RunRequest]:
            """Tick until caught up; returns all run requests."""
            out: list[dg.RunRequest] = []
            for _ in range(max_ticks):
                before = state["cursor"]
                with dg.build_sensor_context(
                    cursor=before, instance=dagster_instance, resources=resources
                ) as context:
                    result = sensor(context)
                assert isinstance(result, dg.SensorResult) and result.cursor is not None
                requests = list(result.run_requests or [])
                out.extend(requests)
                state["cursor"] = result.cursor
                if not requests and json.loads(result.cursor) == json.loads(before):
                    return out
            raise AssertionError("the sensor never caught up")

        return run

    return build


@pytest.fixture()
def evaluate(sensor_for: Callable[..., Evaluate]) -> Evaluate:
    return sensor_for()


def test_n_events_give_n_run_requests_across_budgeted_ticks(kafka: KafkaResource, evaluate: Any) -> None:
    ids = [f"evt-{uuid.uuid4().hex[:10]}" for _ in range(41)]
    produce(kafka, [(request(i), True) for i in ids])
    runs = evaluate()
    assert sorted(r.run_key for r in runs) == sorted(ids)  # none lost, none twice
    first = next(r for r in runs if r.run_key == ids[0])
    assert first.job_name == "echo_flow"
    assert first.tags == {
        names.TAG_PLAN_ID: plan_id_for(ids[0]),
        names.TAG_EVENT_ID: ids[0],
        names.TAG_WORKFLOW: "echo_flow",
        names.TAG_TENANT: "default",
        names.TAG_TRACE_ID: TRACE,
        "agentflow/traceparent": TRACEPARENT,
        "agentflow/workflow_version": "1.2.0",
        "dagster/priority": "0",
    }
    config = first.run_config["ops"]["answer"]["config"]
    assert config["inputs"] == {"question": f"q {ids[0]}", "detail": ""} and config["version"] == "1.2.0"


def test_bad_events_go_to_the_dlq_and_later_events_run(
    kafka: KafkaResource, postgres: PostgresResource, evaluate: Any
) -> None:
    dlq = end_cursor(kafka, names.TOPIC_REQUESTS_DLQ)
    tag = uuid.uuid4().hex[:8]
    items = [
        (b"{not json", True),
        (json.dumps({"event_id": f"s-{tag}", "inputs": {}}).encode(), True),
        (request(f"u-{tag}", workflow="no_such_flow"), True),
        (request(f"o-{tag}", inputs={"question": "x" * 5000}), True),
        (request(f"i-{tag}", inputs={"question": "q", "colour": "red"}), True),
        (request(f"t-{tag}"), False),
        (request(f"d-{tag}"), True),
        (request(f"d-{tag}", priority=5), True),
        (request(f"g-{tag}", priority=3), True),
    ]
    produce(kafka, items)
    runs = evaluate()
    assert sorted(r.run_key for r in runs) == sorted([f"t-{tag}", f"d-{tag}", f"g-{tag}"])

    letters = [
        DeadLetter.model_validate_json(r.value) for r in read_all(kafka, names.TOPIC_REQUESTS_DLQ, dlq)
    ]
    reasons = {_event_id(letter): letter.reason for letter in letters}
    assert reasons["?"].startswith("not JSON")
    assert reasons[f"s-{tag}"].startswith("schema violation: workflow: Field required")
    assert reasons[f"u-{tag}"].startswith("unknown workflow 'no_such_flow'")
    assert reasons[f"o-{tag}"].startswith("oversized")
    assert reasons[f"i-{tag}"].startswith("inputs do not match workflow 'echo_flow'")
    assert len(letters) == 5
    assert all(letter.source_topic == names.TOPIC_REQUESTS for letter in letters)
    assert sorted(letter.partition for letter in letters) == [0, 0, 1, 2, 3]  # items 0-4 by partition i % 4

    traced = next(r for r in runs if r.run_key == f"t-{tag}")
    generated = traced.tags[names.TAG_TRACE_ID]
    assert generated != TRACE and trace_id_from(traced.tags["agentflow/traceparent"]) == generated
    assert next(r for r in runs if r.run_key == f"g-{tag}").tags["dagster/priority"] == "3"
    with postgres.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT event_id, status, trace_id FROM workflow_runs WHERE event_id LIKE :t"),
            {"t": f"%-{tag}"},
        ).all()
        actions = conn.execute(
            sa.text("SELECT subject, action, detail FROM audit_log WHERE subject LIKE :t ORDER BY id"),
            {"t": f"%-{tag}"},
        ).all()
    assert sorted((r[0], r[1]) for r in rows) == sorted(
        (k, "queued") for k in (f"t-{tag}", f"d-{tag}", f"g-{tag}")
    )
    assert dict((r[0], r[2]) for r in rows)[f"t-{tag}"] == generated
    assert [a[1] for a in actions if a[0] == f"d-{tag}"] == ["run.queued", "request.duplicate"]
    assert next(a[2] for a in actions if a[0] == f"t-{tag}")["trace_generated"] is True


def test_large_inputs_travel_by_reference(
    kafka: KafkaResource, postgres: PostgresResource, object_store: ObjectStoreResource, evaluate: Any
) -> None:
    event_id = f"big-{uuid.uuid4().hex[:8]}"
    produce(kafka, [(request(event_id, inputs={"question": "why? " * 200}), True)])
    (run,) = evaluate()
    plan_id = plan_id_for(event_id)
    config = run.run_config["ops"]["answer"]["config"]
    assert config["inputs"] == {} and config["inputs_ref"] == f"requests/{plan_id}.json"
    stored = json.loads(object_store.store.get(names.BUCKET_ARTIFACTS, config["inputs_ref"]))
    assert stored == {"question": "why? " * 200, "detail": ""}
    assert len(json.dumps(run.run_config)) < 1000
    with postgres.engine.connect() as conn:
        inputs = conn.execute(
            sa.text("SELECT inputs FROM workflow_runs WHERE plan_id = :p"), {"p": plan_id}
        ).scalar()
    assert inputs == {"inputs_ref": config["inputs_ref"]}


# --- run max runtime --------------------------------------------------------------------------------
ECHO_SPEC = WorkflowSpec.model_validate(
    {
        "name": "echo_flow",
        "version": "1.2.0",
        "inputs": [{"name": "question"}, {"name": "detail", "required": False, "default": ""}],
        "tasks": [
            {"task_id": "answer", "agent": "a", "timeout_s": 10, "retry": {"max_retries": 2, "delay_s": 1}},
            {
                "task_id": "check", "agent": "b", "depends_on": ["answer"], "timeout_s": 20,
                "retry": {"max_retries": 0}, "fallback_agent": "c",
            },
        ],
    }
)  # fmt: skip


def test_max_runtime_is_the_specs_worst_case_plus_margin() -> None:
    from dagster._core.storage.tags import MAX_RUNTIME_SECONDS_TAG

    assert MAX_RUNTIME_TAG == MAX_RUNTIME_SECONDS_TAG  # the tag run monitoring reads
    # answer: 3 attempts x 10 s + waits (1 + 1 jitter) + (3 + 1); check: 1 attempt x (20 s + 20 s fallback)
    worst = 3 * 10 + 2 + 4 + 40
    assert run_max_runtime_s(ECHO_SPEC) == worst * 1.25 + 300 == 395
    longer = ECHO_SPEC.model_copy(deep=True)
    longer.tasks[0].retry.max_retries = 3  # one more attempt of 10 s and a wait of 7 + 1 s
    assert run_max_runtime_s(longer) == math.ceil((worst + 10 + 8) * 1.25 + 300) == 418


def test_run_requests_carry_the_max_runtime_of_their_spec(
    kafka: KafkaResource, sensor_for: Callable[..., Evaluate]
) -> None:
    """Sensor and direct launch put the same `dagster/max_runtime` (and every other tag) on a run."""
    event_id = f"rt-{uuid.uuid4().hex[:10]}"
    evaluate = sensor_for(specs={"echo_flow": ECHO_SPEC})
    produce(kafka, [(request(event_id), True)])
    (run,) = evaluate()
    assert run.tags[MAX_RUNTIME_TAG] == "395"
    req = WorkflowRequest(event_id=event_id, workflow="echo_flow", inputs={"question": f"q {event_id}"})
    assert run_tags(req, "1.2.0", TRACEPARENT, ECHO_SPEC) == run.tags
    assert MAX_RUNTIME_TAG not in run_tags(req, "1.2.0", TRACEPARENT)  # unknown spec: the instance's


# --- per-tenant daily token budget --------------------------------------------------------------------
def _spend(postgres: PostgresResource, plan_id: str, tokens: int) -> None:
    with postgres.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO llm_calls (plan_id, provider, model, input_tokens, output_tokens, cache_hit) "
                "VALUES (:p, 'offline', 'm', :i, :o, false), (:p, 'offline', 'm', 1000, 1000, true)"
            ),
            {"p": plan_id, "i": tokens // 2, "o": tokens - tokens // 2},
        )


def test_an_over_budget_tenants_new_events_go_to_the_dlq_with_their_bytes(
    kafka: KafkaResource, postgres: PostgresResource, sensor_for: Callable[..., Evaluate]
) -> None:
    tag = uuid.uuid4().hex[:8]
    broke, rich = f"broke_{tag}", f"rich_{tag}"
    quotas = TenantQuotas(tenant_limits={broke: TenantLimits(daily_token_budget=100)}, usage_cache_s=5)
    evaluate = sensor_for(quotas=quotas)
    dlq = end_cursor(kafka, names.TOPIC_REQUESTS_DLQ)

    first = request(f"a-{tag}", tenant=broke)
    produce(kafka, [(first, True)])
    assert [r.run_key for r in evaluate()] == [f"a-{tag}"]  # nothing spent yet
    _spend(postgres, plan_id_for(f"a-{tag}"), 99)
    produce(kafka, [(request(f"b-{tag}", tenant=broke), True)])
    assert [r.run_key for r in evaluate()] == [f"b-{tag}"]  # 99 < 100 (cache hits do not count)

    _spend(postgres, plan_id_for(f"b-{tag}"), 1)  # 100 of 100
    over = request(f"c-{tag}", tenant=broke, inputs={"question": "spent"})
    produce(kafka, [(over, True), (request(f"r-{tag}", tenant=rich), True), (first, False)])
    runs = evaluate()
    # The other tenant runs; a replay of an admitted event is no new work (its run_key drops it).
    assert sorted(r.run_key for r in runs) == sorted([f"r-{tag}", f"a-{tag}"])

    (letter,) = [
        DeadLetter.model_validate_json(r.value) for r in read_all(kafka, names.TOPIC_REQUESTS_DLQ, dlq)
    ]
    assert letter.reason.startswith(f"token budget exceeded for tenant {broke} (used 100 of 100 today)")
    assert base64.b64decode(letter.value_b64) == over  # the original bytes, to produce again later
    assert letter.headers.get("traceparent") == TRACEPARENT
    assert (letter.source_topic, letter.partition) == (names.TOPIC_REQUESTS, 0)
    with postgres.engine.connect() as conn:
        queued = conn.execute(
            sa.text("SELECT event_id FROM workflow_runs WHERE event_id LIKE :t"), {"t": f"%-{tag}"}
        ).scalars()
        audited = conn.execute(
            sa.text(
                "SELECT detail FROM audit_log WHERE action = :a AND detail->>'source' = :s "
                "AND detail->>'reason' LIKE :r"
            ),
            {"a": DLQ_ACTION, "s": f"{names.TOPIC_REQUESTS}[0]@{letter.offset}", "r": f"%{broke}%"},
        ).scalars()
        assert sorted(queued) == sorted([f"a-{tag}", f"b-{tag}", f"r-{tag}"])  # no row for c
        assert [d["dlq_topic"] for d in audited] == [names.TOPIC_REQUESTS_DLQ]
