"""One workflow, one trace: submit -> Kafka header -> sensor -> run tags -> worker process -> LLM spans."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agentflow_dagster import names
from agentflow_dagster.events import WorkflowRequest
from agentflow_dagster.observability import tracing
from agentflow_dagster.settings import Settings
from agentflow_dagster.workflows.loader import load_specs
from ops.compiler import build_workflow_jobs, request_run_config
from resources.object_store import ObjectStoreResource
from resources.postgres import PostgresResource
from sensors.kafka_reader import KafkaRecord
from sensors.workflow_requests import TAG_TRACEPARENT, RequestIntake
from tests.observability.conftest import file_spans, finish, spawn_worker

pytestmark = pytest.mark.timeout(180)
OUR_SPANS = {
    "send",
    "process",
    "invoke_workflow",
    "invoke_agent",
    "chat",
    "retrieval",
    "embeddings",
    "execute_tool",
}


def _norm_memory(span: Any) -> dict[str, Any]:
    return {
        "name": span.name,
        "trace_id": f"{span.context.trace_id:032x}",
        "span_id": f"{span.context.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "attributes": dict(span.attributes or {}),
    }


def _norm_file(span: dict[str, Any]) -> dict[str, Any]:
    ctx = span["context"]
    parent = span.get("parent_id")
    return {
        "name": span["name"],
        "trace_id": ctx["trace_id"].removeprefix("0x"),
        "span_id": ctx["span_id"].removeprefix("0x"),
        "parent_id": parent.removeprefix("0x") if parent else None,
        "attributes": span.get("attributes") or {},
    }


def test_one_trace_from_submit_to_every_llm_span(
    spans: InMemorySpanExporter, pg_url: str, redis_url: str, object_store_dir: Path, tmp_path: Path
) -> None:
    specs = load_specs()
    spec = specs["support_triage"]
    jobs = {j.name: j for j in build_workflow_jobs([spec])}
    req = WorkflowRequest(
        event_id=f"ev-{uuid.uuid4().hex[:12]}",
        workflow=spec.name,
        inputs={"message": "I was charged twice this month, my card is 4111 1111 1111 1111. Refund please."},
    )
    # agentflow submit: the producer span's context goes into the Kafka header.
    with tracing.send_span(names.TOPIC_REQUESTS, agentflow__plan_id=req.plan_id):
        header = tracing.inject_traceparent()
    assert header is not None
    # The sensor: the real intake turns the record into a RunRequest whose tags carry the trace context.
    intake = RequestIntake(
        jobs=jobs,
        specs={spec.name: spec},
        run_config=lambda r, v, tp: request_run_config(r, v, traceparent=tp),
        settings=Settings(),
        postgres=PostgresResource(url=pg_url),
        object_store=ObjectStoreResource(local_dir=str(object_store_dir)),
    )
    record = KafkaRecord(names.TOPIC_REQUESTS, 0, 0, req.event_id.encode(), req.model_dump_json().encode(),
                         {"traceparent": header.encode()}, 0)  # fmt: skip
    intake.handle(record)
    (run_request,) = intake.run_requests
    tag = run_request.tags[TAG_TRACEPARENT]
    assert run_request.tags[names.TAG_TRACE_ID] == header.split("-")[1]
    # The run worker is another process: the context crosses as the run tag's string.
    worker = spawn_worker(pg_url, redis_url, object_store_dir, req, tag, tmp_path)
    assert finish(worker)["success"]

    local = [_norm_memory(s) for s in spans.get_finished_spans()]
    remote = [_norm_file(s) for s in file_spans(tmp_path)]
    everything = {s["span_id"]: s for s in local + remote}
    root = next(s for s in local if s["name"] == f"send {names.TOPIC_REQUESTS}")
    chats = [s for s in remote if s["name"].startswith("chat ")]
    agents = [s for s in remote if s["name"].startswith("invoke_agent ")]
    assert len(chats) >= 5 and len(agents) == 5  # five tasks, at least one call each
    ours = [s for s in everything.values() if s["name"].split(" ")[0] in OUR_SPANS]
    assert {s["trace_id"] for s in ours} == {root["trace_id"]}
    # Client instrumentation: the task's Postgres queries are spans of the same trace.
    assert any(s["attributes"].get("db.system") for s in remote if s["trace_id"] == root["trace_id"])
    for chat in chats:
        chain, node = [], chat
        while node["parent_id"] is not None:
            node = everything[node["parent_id"]]  # KeyError = a broken chain
            chain.append(node["name"].split(" ")[0])
        assert node is root
        assert chain == ["invoke_agent", "invoke_workflow", "send"]
        attrs = chat["attributes"]
        assert (
            attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.provider.name"] == "offline-extractive"
        )
        assert attrs["gen_ai.usage.input_tokens"] > 0 and attrs["agentflow.plan_id"] == req.plan_id
        assert "gen_ai.input.messages" not in attrs  # content capture is opt-in
    sensor = next(s for s in local if s["name"] == f"process {names.TOPIC_REQUESTS}")
    assert sensor["parent_id"] == root["span_id"]
    wf = next(s for s in remote if s["name"] == "invoke_workflow support_triage")
    assert wf["attributes"]["gen_ai.workflow.name"] == "support_triage"
