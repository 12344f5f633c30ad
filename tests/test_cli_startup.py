"""`agentflow status|submit|trace|audit` start without Dagster, torch, sentence-transformers or FastAPI.

Each command runs in a fresh interpreter under `python -X importtime` against the session's real
servers and must do its work (`agentflow search` has the same test in tests/rag/test_embedders.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import dagster as dg
from kafka import TopicPartition

from agentflow_dagster import names
from agentflow_dagster.clients import KafkaClients
from agentflow_dagster.db import make_engine
from tests.observability.test_trace_cli import _seed
from tests.support.seaweed import SeaweedServer

HEAVY = {"dagster", "torch", "sentence_transformers", "fastapi"}


def run_cli(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """(the finished command, the modules it imported) of `agentflow ARGS` in a fresh interpreter."""
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("AGENTFLOW_", "DAGSTER_HOME", "OPENAI_"))
    }
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "agentflow_dagster", *args],
        env=base | env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    return out, imported


def seeded_plan(pg_url: str) -> str:
    """A finished plan with an LLM call, a retrieval and a tool call (test_trace_cli's)."""
    engine = make_engine(pg_url)
    try:
        return _seed(engine)[0]
    finally:
        engine.dispose()


def audit_env(pg_url: str, tmp_path: Path, dagster_yaml: str) -> dict[str, str]:
    """The environment of `agentflow audit` with a Dagster home holding `dagster_yaml`."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(dagster_yaml)
    return {"AGENTFLOW_POSTGRES_URL": pg_url, "DAGSTER_HOME": str(home), "AGENTFLOW_DATA_DIR": str(tmp_path)}


def test_status_checks_real_servers_without_heavy_imports(
    pg_url: str, redis_url: str, kafka_bootstrap: str, s3_server: SeaweedServer, servers_dir: Path
) -> None:
    from agentflow_dagster.stack.services import free_port

    env = {
        "AGENTFLOW_DATA_DIR": str(servers_dir),  # the SeaweedFS keys are there, as `agentflow up` writes them
        "AGENTFLOW_S3_PORT": str(s3_server.port),
        "AGENTFLOW_POSTGRES_URL": pg_url,
        "AGENTFLOW_REDIS_URL": redis_url,
        "AGENTFLOW_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "AGENTFLOW_WEBSERVER_PORT": str(free_port()),  # nothing listens: Dagster is reported DOWN
        "AGENTFLOW_METRICS_PORT": str(free_port()),
    }
    out, imported = run_cli(env, "status", "--json")
    assert out.returncode == 1, out.stderr[-2000:]  # Dagster is not running here
    state = {c["component"]: c["healthy"] for c in json.loads(out.stdout)}
    assert [k for k, ok in state.items() if ok] == ["postgres", "redis", "kafka", "object_store", "project"]
    assert not state["dagster_webserver"] and not state["metrics"]
    assert not HEAVY & imported, HEAVY & imported

    # The project is validated in a child process: a broken one is DOWN, naming the file and field.
    broken = servers_dir / "broken_project"
    broken.mkdir(exist_ok=True)
    (broken / "agentflow.yaml").write_text("name: 5\n")
    out, _ = run_cli({**env, "AGENTFLOW_PROJECT_DIR": str(broken)}, "status", "--json")
    row = {c["component"]: c for c in json.loads(out.stdout)}["project"]
    assert not row["healthy"] and row["address"] == str(broken), row
    assert f"{broken}/agentflow.yaml: field 'name'" in row["detail"], row


def test_submit_publishes_without_heavy_imports(kafka_bootstrap: str, tmp_path: Path) -> None:
    kafka = KafkaClients(kafka_bootstrap)
    consumer = kafka.consumer()
    try:
        tps = [TopicPartition(names.TOPIC_REQUESTS, p) for p in kafka.partitions_for(names.TOPIC_REQUESTS)]
        start = consumer.end_offsets(tps)
        event_id = f"startup-{uuid.uuid4().hex}"
        env = {"AGENTFLOW_DATA_DIR": str(tmp_path), "AGENTFLOW_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
        out, imported = run_cli(
            env, "submit", "support_triage", "--input", "message=hi", "--event-id", event_id
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert re.search(
            rf"event_id={event_id} plan_id=plan-[0-9a-f]{{20}} trace_id=[0-9a-f]{{32}}", out.stdout
        )
        consumer.assign(tps)
        for tp, offset in start.items():
            consumer.seek(tp, offset)
        sent = [json.loads(m.value) for batch in consumer.poll(timeout_ms=5000).values() for m in batch]
    finally:
        consumer.close()
    assert event_id in [m["event_id"] for m in sent]
    assert not HEAVY & imported, HEAVY & imported


def test_trace_without_heavy_imports(pg_url: str) -> None:
    plan_id = seeded_plan(pg_url)
    out, imported = run_cli({"AGENTFLOW_POSTGRES_URL": pg_url}, "trace", plan_id)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"plan {plan_id}" in out.stdout and "retrievals: 1" in out.stdout
    assert not HEAVY & imported, HEAVY & imported


def test_audit_reads_run_statuses_without_dagster(pg_url: str, tmp_path: Path) -> None:
    """The run's status comes from the instance's run storage (SQLite here), not a DagsterInstance."""
    plan_id = seeded_plan(pg_url)
    env = audit_env(pg_url, tmp_path, "telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        run = instance.add_run(
            dg.DagsterRun(
                job_name="support_triage",
                status=dg.DagsterRunStatus.FAILURE,
                tags={names.TAG_PLAN_ID: plan_id},
            )
        )
    out, imported = run_cli(env, "audit", plan_id, "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout)
    assert "note" not in doc, doc["note"]
    [found] = doc["dagster_runs"]
    assert (found["run_id"], found["job"], found["status"]) == (run.run_id, "support_triage", "FAILURE")
    assert found["tags"] == {names.TAG_PLAN_ID: plan_id}
    assert not HEAVY & imported, HEAVY & imported


def test_audit_notes_an_unreadable_run_storage(pg_url: str, tmp_path: Path) -> None:
    """A configured storage that cannot be read leaves statuses unknown, with the reason, not a crash."""
    plan_id = seeded_plan(pg_url)
    env = audit_env(
        pg_url, tmp_path, "storage:\n  postgres:\n    postgres_url:\n      env: UNSET_FOR_THIS_TEST\n"
    )
    out, _ = run_cli(env, "audit", plan_id)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "UNSET_FOR_THIS_TEST" in out.stderr and "run statuses unknown" in out.stderr
