"""/metrics after N workflows, some run by separate processes: the counters equal N exactly."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from agentflow_dagster.db import make_engine
from agentflow_dagster.events import WorkflowRequest
from agentflow_dagster.observability.metrics import AgentflowCollector, build_registry, serve
from tests.observability.conftest import finish, spawn_worker

pytestmark = pytest.mark.timeout(180)
TRACEPARENT = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url, timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_counts_are_exact_across_processes(
    pg_url: str, redis_url: str, object_store_dir: Path, tmp_path: Path
) -> None:
    tenant = f"t_{uuid.uuid4().hex[:8]}"  # a fresh label set: no other test's rows count
    workflow = "summarize_with_fallback"
    procs = []
    for i in range(3):  # three run workers in three processes, at the same time
        req = WorkflowRequest(
            event_id=f"ev-{uuid.uuid4().hex[:12]}",
            workflow=workflow,
            tenant=tenant,
            inputs={"document": f"Run {i}. Dagster is an orchestrator. It models data assets as code."},
        )
        procs.append(spawn_worker(pg_url, redis_url, object_store_dir, req, TRACEPARENT, tmp_path / str(i)))
    assert all(finish(p)["success"] for p in procs)
    engine = make_engine(pg_url)
    with engine.begin() as conn:  # a dead-lettered event, as the request sensor records it
        conn.execute(
            sa.text(
                "INSERT INTO audit_log (actor, action, subject, detail) VALUES ('test', "
                "'event.dead_lettered', "
                "'agentflow.workflow.requests', CAST(:d AS jsonb))"
            ),
            {"d": f'{{"dlq_topic": "dlq-{tenant}"}}'},
        )
    server, thread = serve(build_registry(AgentflowCollector(engine=engine)), "127.0.0.1", 0)
    try:
        m = _scrape(f"http://127.0.0.1:{server.server_port}/metrics")
    finally:
        server.shutdown()
        thread.join(5)
        engine.dispose()
    labels = (("tenant", tenant), ("workflow", workflow))
    assert m[("agentflow_workflows_started_total", labels)] == 3
    assert m[("agentflow_workflows_completed_total", labels)] == 3
    assert m[("agentflow_workflows_failed_total", labels)] == 0
    assert m[("agentflow_workflow_e2e_latency_seconds_count", labels)] == 3
    assert m[("agentflow_workflow_e2e_latency_seconds_bucket", (("le", "+Inf"), *labels))] == 3
    assert m[("agentflow_dlq_events_total", (("topic", f"dlq-{tenant}"),))] == 1
    assert m[("agentflow_metrics_source_up", (("source", "postgres"),))] == 1
    for name in (
        "agentflow_task_duration_seconds_count",
        "agentflow_llm_calls_total",
        "gen_ai_client_token_usage_count",
        "gen_ai_client_operation_duration_seconds_count",
    ):
        assert any(k[0] == name and v > 0 for k, v in m.items()), name
    # Token histogram sums equal the rows' sums exactly.
    with make_engine(pg_url).connect() as conn:
        want = conn.execute(
            sa.text("SELECT model, sum(input_tokens) FROM llm_calls WHERE error IS NULL GROUP BY model")
        ).all()
    for model, tokens in want:
        key = (
            "gen_ai_client_token_usage_sum",
            (("gen_ai_request_model", model), ("gen_ai_token_type", "input")),
        )
        assert m[key] == tokens
