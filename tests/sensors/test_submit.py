"""`agentflow submit` publishes a traced request and, with --wait, prints the matching result."""

from __future__ import annotations

import json
import threading
import time

import pytest
from click.testing import CliRunner

from agentflow_dagster import names
from agentflow_dagster.commands.submit import submit
from agentflow_dagster.events import WorkflowRequest, WorkflowResult
from agentflow_dagster.settings import get_settings
from resources.kafka import KafkaResource
from sensors.workflow_requests import trace_id_from
from tests.sensors.conftest import end_cursor, read_all


def test_submit_wait_prints_the_result(
    kafka: KafkaResource, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTFLOW_KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    get_settings.cache_clear()
    cursor = end_cursor(kafka, names.TOPIC_REQUESTS)
    seen: list[tuple[WorkflowRequest, str | None]] = []

    def answer() -> None:
        """Plays the platform: reply to the request on the results topic."""
        deadline = time.monotonic() + 30
        while not seen and time.monotonic() < deadline:
            for record in read_all(kafka, names.TOPIC_REQUESTS, cursor):
                seen.append((WorkflowRequest.model_validate_json(record.value), record.header("traceparent")))
        req = seen[0][0]
        result = WorkflowResult(
            event_id=req.event_id,
            plan_id=req.plan_id,
            run_id="r1",
            workflow=req.workflow,
            tenant=req.tenant,
            status="succeeded",
            output={"echo": req.inputs},
        )
        producer = kafka.producer()
        producer.send(names.TOPIC_RESULTS, value=result.model_dump_json().encode()).get(timeout=10)
        producer.close()

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        out = CliRunner().invoke(
            submit,
            [
                "support_triage",
                "--input",
                "message=why",
                "--input",
                "customer_tier=gold",
                "--tenant",
                "acme",
                "--wait",
                "--timeout",
                "40",
            ],
        )
    finally:
        thread.join()
        get_settings.cache_clear()
    assert out.exit_code == 0, out.output
    req, traceparent = seen[0]
    assert req.inputs == {"message": "why", "customer_tier": "gold"} and req.tenant == "acme"
    first, rest = out.stdout.split("\n", 1)  # progress lines go to stderr
    assert first == f"event_id={req.event_id} plan_id={req.plan_id} trace_id={trace_id_from(traceparent)}"
    assert json.loads(rest)["output"] == {"echo": {"message": "why", "customer_tier": "gold"}}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no_such_flow", "--input", "x=1"], "unknown workflow 'no_such_flow'"),
        (["support_triage", "--input", "question=why"], "undeclared inputs ['question']"),
        (["support_triage"], "message"),
    ],
)
def test_submit_refuses_what_the_sensor_would_dead_letter(
    kafka: KafkaResource, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    monkeypatch.setenv("AGENTFLOW_KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    get_settings.cache_clear()
    cursor = end_cursor(kafka, names.TOPIC_REQUESTS)
    try:
        out = CliRunner().invoke(submit, args)
    finally:
        get_settings.cache_clear()
    assert out.exit_code == 2 and message in out.output, out.output
    assert read_all(kafka, names.TOPIC_REQUESTS, cursor) == []
