"""The configured LLM API key, and a key an answer echoes, appear in no run config, event log, span,
UI snapshot or history row (tests/observability covers redaction of prompts in `llm_calls`)."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster._core.remote_representation.external_data import RepositorySnap
from dagster._serdes import serialize_value
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agentflow_dagster.resources_env import build_resources
from agentflow_dagster.settings import Settings, get_settings
from agentflow_dagster.workflows.loader import load_specs
from ops.compiler import build_workflow_job, request_run_config
from tests.ops.conftest import new_request, rows
from tests.support import llm_server as script
from tests.support.llm_server import LLMTestServer
from tests.support.seaweed import SeaweedServer

API_KEY = "sk-proj-" + "Cfg7Key8Secret9" * 3
ECHOED = "sk-proj-" + "Echo1Leak2Model3" * 3
TABLES = ("llm_calls", "task_outputs", "task_runs", "workflow_runs", "audit_log")


def test_api_key_reaches_no_record(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    pg_url: str,
    redis_url: str,
    llm_server: LLMTestServer,
    spans: InMemorySpanExporter,
    engine: sa.Engine,
    s3_server: SeaweedServer,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    # The session's SeaweedFS holds large payloads; its keys come from the environment here.
    monkeypatch.setenv("AGENTFLOW_S3_ENDPOINT", s3_server.endpoint)
    monkeypatch.setenv("AGENTFLOW_S3_ACCESS_KEY", s3_server.credentials.access_key)
    monkeypatch.setenv("AGENTFLOW_S3_SECRET_KEY", s3_server.credentials.secret_key)
    monkeypatch.setenv("OPENAI_BASE_URL", llm_server.base_url)
    monkeypatch.setenv("AGENTFLOW_POSTGRES_URL", pg_url)
    monkeypatch.setenv("AGENTFLOW_REDIS_URL", redis_url)
    monkeypatch.setenv("AGENTFLOW_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    # The model echoes a key it saw somewhere (a document, a pasted message) in its answer.
    answer = {"summary": f"Use the key {ECHOED} to log in.", "key_points": [f"api_key={ECHOED}"]}
    llm_server.rule(
        lambda body: "summarize documents" in body["messages"][0]["content"], script.ok(json.dumps(answer))
    )

    spec = load_specs()["summarize_with_fallback"]
    job = build_workflow_job(spec)
    resources = build_resources(Settings())
    req = new_request(spec, {"document": "Kafka keeps ordered logs per partition."})
    run_config = request_run_config(req, spec.version, traceparent="00-" + "ab" * 16 + "-" + "cd" * 8 + "-01")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(run_config=run_config, resources=resources, instance=instance)
        assert result.success
        assert llm_server.count() == 2  # the key configured through EnvVar reached the client
        run = instance.get_run_by_id(result.run_id)
        assert run is not None
        records = {
            "run config": json.dumps(run.run_config, default=str),
            "run tags": json.dumps(run.tags),
            "event log": "\n".join(serialize_value(e) for e in instance.all_logs(result.run_id)),
        }
    defs = dg.Definitions(jobs=[job], resources=resources)
    records["UI snapshot"] = serialize_value(RepositorySnap.from_def(defs.get_repository_def()))
    records["spans"] = "\n".join(s.to_json() for s in spans.get_finished_spans())
    for table in TABLES:
        found = rows(engine, f"SELECT * FROM {table} WHERE plan_id = :p", p=req.plan_id)
        assert found, f"{table} has no row for the plan"
        records[table] = json.dumps([r._asdict() for r in found], default=str)

    assert "OPENAI_API_KEY" in records["UI snapshot"]  # the UI shows where the key comes from, only
    assert any("gen_ai" in s for s in records["spans"].split("\n"))
    leaks = {where: key for where, text in records.items() for key in (API_KEY, ECHOED) if key in text}
    assert leaks == {}
    assert "[REDACTED:openai_key]" in records["task_outputs"]  # the echoed key was replaced, not dropped
    get_settings.cache_clear()
