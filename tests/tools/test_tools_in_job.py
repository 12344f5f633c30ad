"""Tools in compiled workflow jobs: a user project's Python and MCP tools, the approval gate, a killed worker.

Real servers only: embedded Postgres and Redis, the scripted OpenAI-compatible server on loopback, and
the project's MCP server as a stdio child process. Each tool appends a line to its own log per real
execution, so the log, not the platform's bookkeeping, proves how often a side effect happened.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
import sqlalchemy as sa
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agentflow_dagster import names
from agentflow_dagster.events import ApprovalDecision, WorkflowRequest
from agentflow_dagster.settings import get_settings
from agentflow_dagster.workflows.loader import load_specs
from ops import approvals
from ops.compiler import build_workflow_job
from ops.idempotency import lock_key
from resources.postgres import PostgresResource
from sensors.approvals import ApprovalIntake
from sensors.kafka_reader import BadRecord, KafkaRecord
from tests.observability.conftest import REPO, finish
from tests.ops.conftest import Resources, execute, new_request, rows, server_llm
from tests.support import llm_server as script
from tests.support.live_stack import kill_tree, wait_until
from tests.support.llm_server import LLMTestServer


def has_tool_results(body: dict[str, Any]) -> bool:
    """A request that carries tool results back to the model (the round after a tool ran)."""
    return any(m.get("role") == "tool" for m in body.get("messages", []))


def log_lines(log: Path, prefix: str) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith(prefix)]


def test_python_and_mcp_tools_run_in_a_workflow_and_are_recorded(
    project: Path,
    tool_log: Path,
    workflow_resources: Resources,
    llm_server: LLMTestServer,
    engine: sa.Engine,
    spans: InMemorySpanExporter,
) -> None:
    spec = load_specs()["restock"]
    req = new_request(spec, {"request": "Restock product A-1."})
    llm_server.script(
        script.tool_calls(("lookup_stock", {"sku": "A-1"}), ("reserve_stock", {"sku": "A-1", "units": 2})),
        script.tool_calls(("place_order", {"sku": "A-1", "units": 5})),
    )
    result = execute(build_workflow_job(spec), spec, req, workflow_resources(server_llm(llm_server)))
    assert result.success
    assert llm_server.count() == 3
    offered = llm_server.requests[0]["tools"]
    assert sorted(t["function"]["name"] for t in offered) == [
        "lookup_stock", "place_order", "refund", "reserve_stock",
    ]  # fmt: skip
    # The MCP tool's idempotency key is supplied by the platform, not by the model.
    reserve = next(t for t in offered if t["function"]["name"] == "reserve_stock")["function"]
    assert "idempotency_key" not in reserve["parameters"]["properties"]
    # Side effects happened once each, with the platform's key passed on.
    (reserved,) = log_lines(tool_log, "reserve")
    (placed,) = log_lines(tool_log, "place_order")
    assert reserved.startswith("reserve A-1 2 af-") and placed.startswith("place_order A-1 5 af-")
    found = rows(
        engine,
        "SELECT tool, status, side_effects, result, arguments, attempt, run_id, call_id FROM tool_calls "
        "WHERE plan_id = :p ORDER BY id",
        p=req.plan_id,
    )
    assert [(r.tool, r.status, r.side_effects) for r in found] == [
        ("lookup_stock", "ok", "none"),  # the server's read-only hint
        ("reserve_stock", "ok", "external"),
        ("place_order", "ok", "external"),
    ]
    assert found[0].result == {"sku": "A-1", "units": 7}
    assert found[2].arguments == {"sku": "A-1", "units": 5} and found[2].run_id == result.run_id
    # Each call is an execute_tool span inside the task's invoke_agent span.
    agent = next(s for s in spans.get_finished_spans() if s.name == "invoke_agent buyer")
    tool_spans = [s for s in spans.get_finished_spans() if s.name.startswith("execute_tool ")]
    assert [s.name for s in tool_spans] == [
        "execute_tool lookup_stock", "execute_tool reserve_stock", "execute_tool place_order",
    ]  # fmt: skip
    for span, row in zip(tool_spans, found, strict=True):
        attrs = span.attributes or {}
        assert attrs["gen_ai.operation.name"] == "execute_tool" and attrs["gen_ai.tool.name"] == row.tool
        assert attrs["gen_ai.tool.call.id"] == row.call_id and attrs["agentflow.plan_id"] == req.plan_id
        assert span.parent is not None and span.parent.span_id == agent.context.span_id
    assert tool_spans[1].attributes["gen_ai.tool.type"] == "extension"  # type: ignore[index]


def test_approval_gated_tool_waits_then_runs_once_after_approval(
    project: Path,
    tool_log: Path,
    workflow_resources: Resources,
    llm_server: LLMTestServer,
    engine: sa.Engine,
    pg_url: str,
) -> None:
    spec = load_specs()["restock"]
    req = new_request(spec, {"request": "Refund order PO-1, 20 euros."})
    refund = ("refund", {"order": "PO-1", "amount_eur": 20})
    llm_server.rule(lambda body: not has_tool_results(body), script.tool_calls(refund))
    job, resources = build_workflow_job(spec), workflow_resources(server_llm(llm_server))

    assert execute(job, spec, req, resources).success  # the run ends cleanly at the gate
    assert log_lines(tool_log, "refund") == []
    (wf,) = rows(engine, "SELECT status FROM workflow_runs WHERE plan_id = :p", p=req.plan_id)
    (gate,) = rows(engine, "SELECT task_id, status FROM workflow_approvals WHERE plan_id = :p", p=req.plan_id)
    assert wf.status == "waiting_approval" and gate.status == "waiting"
    assert gate.task_id.startswith("buy/tool:refund:")
    # The approver is shown the proposed call.
    (asked,) = rows(
        engine,
        "SELECT detail FROM audit_log WHERE plan_id = :p AND action = 'tool.approval_requested'",
        p=req.plan_id,
    )
    assert asked.detail["arguments"] == {"order": "PO-1", "amount_eur": 20.0}
    assert asked.detail["gate"] == gate.task_id

    # The decision arrives as an approvals event (the sensor's intake, without the Kafka round trip).
    intake = ApprovalIntake({spec.name: spec}, PostgresResource(url=pg_url), get_settings())

    def decide(gate_id: str) -> None:
        event = ApprovalDecision(
            event_id=f"ev-{uuid.uuid4().hex[:12]}", plan_id=req.plan_id, task_id=gate_id,
            decision="approve", tenant=req.tenant, actor="key:alice",
        )  # fmt: skip
        value = event.model_dump_json().encode()
        intake.handle(KafkaRecord(names.TOPIC_APPROVALS, 0, 0, None, value, {}, 0))

    with pytest.raises(BadRecord, match="proposed no tool call 'buy/tool:refund:000000000000'"):
        decide("buy/tool:refund:000000000000")  # a call no run proposed cannot be approved ahead
    decide(gate.task_id)
    assert intake.outcomes == {"resumes": 1}
    for _ in range(2):  # the resumed run, then a replay of it
        assert execute(job, spec, req, resources).success
    assert len(log_lines(tool_log, "refund")) == 1
    (wf,) = rows(engine, "SELECT status FROM workflow_runs WHERE plan_id = :p", p=req.plan_id)
    statuses = rows(engine, "SELECT status FROM tool_calls WHERE plan_id = :p ORDER BY id", p=req.plan_id)
    assert wf.status == "succeeded" and [s.status for s in statuses] == ["pending_approval", "ok"]


def test_rejected_tool_call_ends_the_plan_rejected(
    project: Path,
    tool_log: Path,
    workflow_resources: Resources,
    llm_server: LLMTestServer,
    engine: sa.Engine,
) -> None:
    spec = load_specs()["restock"]
    req = new_request(spec, {"request": "Refund order PO-2, 900 euros."})
    llm_server.rule(
        lambda body: not has_tool_results(body),
        script.tool_calls(("refund", {"order": "PO-2", "amount_eur": 900})),
    )
    job, resources = build_workflow_job(spec), workflow_resources(server_llm(llm_server))
    assert execute(job, spec, req, resources).success
    (gate,) = rows(engine, "SELECT task_id FROM workflow_approvals WHERE plan_id = :p", p=req.plan_id)
    decision = approvals.Decision(
        event_id=f"ev-{uuid.uuid4().hex[:12]}", plan_id=req.plan_id, task_id=gate.task_id, decision="reject",
        actor="key:bob", comment="too much", tenant=req.tenant, decided_at=datetime.now(UTC),
    )  # fmt: skip
    assert approvals.record_decision(engine, decision, "test") == "resumes"
    assert execute(job, spec, req, resources).success
    (wf,) = rows(engine, "SELECT status, error FROM workflow_runs WHERE plan_id = :p", p=req.plan_id)
    assert wf.status == "rejected" and "rejected by key:bob: too much" in wf.error
    assert log_lines(tool_log, "refund") == []
    statuses = rows(engine, "SELECT status FROM tool_calls WHERE plan_id = :p ORDER BY id", p=req.plan_id)
    assert [s.status for s in statuses] == ["pending_approval", "refused"]


def _spawn_worker(
    pg_url: str, redis_url: str, object_dir: Path, llm: LLMTestServer, req: WorkflowRequest, data_dir: Path
) -> subprocess.Popen[str]:
    env = {**os.environ, "AGENTFLOW_DATA_DIR": str(data_dir), "OTEL_TRACES_EXPORTER": "none"}
    args = [sys.executable, "-m", "tests.tools.run_worker", pg_url, redis_url, str(object_dir), llm.base_url]
    return subprocess.Popen(
        [*args, req.model_dump_json()], cwd=REPO, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def test_worker_killed_after_a_side_effect_is_reexecuted_without_repeating_it(
    project: Path,
    tool_log: Path,
    llm_server: LLMTestServer,
    engine: sa.Engine,
    pg_url: str,
    redis_url: str,
    object_store_dir: Path,
    tmp_path: Path,
) -> None:
    """SIGKILL the run worker while the model reads the tool's result; the re-run reuses the stored result."""
    spec = load_specs()["restock"]
    req = new_request(spec, {"request": "Order 5 units of A-1."})
    stalled = {"on": True}
    llm_server.rule(lambda body: stalled["on"] and has_tool_results(body), script.slow(300))
    llm_server.rule(
        lambda body: not has_tool_results(body),
        script.tool_calls(("place_order", {"sku": "A-1", "units": 5})),
    )
    first = _spawn_worker(pg_url, redis_url, object_store_dir, llm_server, req, tmp_path / "w1")
    try:
        wait_until(lambda: llm_server.count(has_tool_results) >= 1, 180, "the model to be sent the result")
    finally:
        kill_tree(first.pid)
        out, err = first.communicate(timeout=30)
    # Killed mid-run: no report (kill_tree reaped it, so Popen cannot see the signal in returncode).
    assert out == "" and "RUN_SUCCESS" not in err
    assert len(log_lines(tool_log, "place_order")) == 1
    stalled["on"] = False
    # On the stack, run monitoring fails the dead run and the next worker breaks its lock
    # (tests/chaos); this worker had no Dagster instance to record it, so the test frees the lock.
    client = redis_lib.Redis.from_url(redis_url)
    client.delete(lock_key(req.plan_id, "buy"))
    client.close()

    second = _spawn_worker(pg_url, redis_url, object_store_dir, llm_server, req, tmp_path / "w2")
    report = finish(second, timeout=240)
    assert report["success"]
    # The tool's own log: it ran once, although the task ran twice and the model asked twice.
    assert len(log_lines(tool_log, "place_order")) == 1
    assert llm_server.count(lambda b: not has_tool_results(b)) == 2
    # The re-run's model saw the stored result byte for byte (only the model's own call id differs).
    results = [
        [m["content"].split("\n", 1)[1] for m in body["messages"] if m.get("role") == "tool"]
        for body in llm_server.requests
        if has_tool_results(body)
    ]
    assert len(results) == 2 and results[0] == results[1]
    found = rows(engine, "SELECT status, run_id, result FROM tool_calls WHERE plan_id = :p", p=req.plan_id)
    assert [r.status for r in found] == ["ok"] and found[0].run_id != report["run_id"]
    assert json.loads(json.dumps(found[0].result))["order"] == "PO-A-1-5"
