"""`agentflow audit PLAN_ID` on a real workflow run: request, spec, runs, tasks, approvals, LLM calls,
the retrievals (documents, scores and the physical index searched), the audit log in time order; plans
recorded before retrieval records; and an unknown plan."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from agentflow_dagster.api.direct import run_tags
from agentflow_dagster.commands.audit import audit, load_audit, render_audit
from agentflow_dagster.db import make_engine
from agentflow_dagster.rag.pgvector_store import PgVectorStore
from agentflow_dagster.rag.retriever import Retriever
from agentflow_dagster.rag.store import VectorRecord
from agentflow_dagster.settings import get_settings
from agentflow_dagster.workflows.loader import load_specs
from agentflow_dagster.workflows.spec import WorkflowSpec
from ops.compiler import build_workflow_job, request_run_config
from resources.llm import LLMResource
from resources.object_store import ObjectStoreResource
from resources.postgres import PostgresResource
from resources.redis import RedisResource
from tests.ops.conftest import new_request

DIM = 16
TRACEPARENT = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
DOCS = {
    "refunds.md": "Refunds for double charges are issued within five business days of the request.",
    "billing.md": "Invoices list every subscription charge; a duplicate charge is reversed on request.",
}


class HashEmbedder:
    """A deterministic bag-of-words embedder: enough for pgvector to rank the two test documents."""

    model_id = "test-hash-16"
    dimension = DIM

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i, int(hashlib.sha256(word.encode()).hexdigest(), 16) % DIM] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)


@pytest.fixture
def collection() -> str:
    return f"audit_kb_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def spec(collection: str) -> WorkflowSpec:
    """support_triage under its own name, retrieving from this test's collection."""
    raw = load_specs()["support_triage"].model_dump(mode="json", exclude_none=True)
    raw["name"] = f"audit_{uuid.uuid4().hex[:8]}"
    for task in raw["tasks"]:
        if task.get("retrieval"):
            task["retrieval"]["collection"] = collection
    return WorkflowSpec.model_validate(raw)


def _index(pg_url: str, collection: str) -> tuple[PgVectorStore, str]:
    store = PgVectorStore(pg_url)
    embedder = HashEmbedder()
    vectors = embedder.embed(list(DOCS.values()))
    records = [
        VectorRecord(f"{collection}-{name}-0", name, f"v-{name}", 0, 0, len(text), text, vectors[i].tolist())
        for i, (name, text) in enumerate(DOCS.items())
    ]
    info = store.rebuild(collection, records, model=embedder.model_id, dim=DIM)
    return store, info.name


def test_audit_of_a_real_run(
    redis_url: str,
    spec: WorkflowSpec,
    collection: str,
    pg_url: str,
    object_store_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, index_name = _index(pg_url, collection)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    message = "I was charged twice, please refund the duplicate charge"
    req = new_request(spec, {"message": message}, tenant="acme")
    resources: dict[str, Any] = {
        "postgres": PostgresResource(url=pg_url),
        "redis": RedisResource(url=redis_url),
        "object_store": ObjectStoreResource(local_dir=str(object_store_dir)),
        "llm": LLMResource(),  # the labelled offline provider
        "kb": Retriever(HashEmbedder(), store),
    }
    job = build_workflow_job(spec, retriever_keys=("kb",))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        result = job.execute_in_process(
            run_config=request_run_config(req, spec.version, traceparent=TRACEPARENT),
            resources=resources,
            instance=instance,
            tags=run_tags(req, spec.version, TRACEPARENT),
            raise_on_error=False,
        )
    assert result.success
    # An approval as the API records it (POST /v1/workflows/{plan_id}/approvals).
    PostgresResource(url=pg_url).audit(
        "key:0123456789ab", "approval.approve", req.plan_id, "draft", comment="refund checked"
    )

    monkeypatch.setenv("AGENTFLOW_POSTGRES_URL", pg_url)
    monkeypatch.setenv("AGENTFLOW_DATA_DIR", str(object_store_dir.parent))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    get_settings.cache_clear()
    try:
        as_json = CliRunner().invoke(audit, [req.plan_id, "--json"])
        as_text = CliRunner().invoke(audit, [req.plan_id])
    finally:
        get_settings.cache_clear()
    assert as_json.exit_code == 0, as_json.output
    doc = json.loads(as_json.output)

    r = doc["request"]
    assert (r["event_id"], r["workflow"], r["version"], r["tenant"]) == (
        req.event_id, spec.name, spec.version, "acme"
    )  # fmt: skip
    assert r["trace_id"] == "ab" * 16 and r["received_at"] and r["received_by"] == "agentflow.ops"
    assert doc["status"] == "succeeded"
    assert doc["spec"]["spec_hash"] == spec.spec_hash and doc["spec"]["version"] == spec.version

    [run] = doc["dagster_runs"]
    assert run["run_id"] == result.run_id and run["status"] == "SUCCESS"
    assert run["tags"]["agentflow/plan_id"] == req.plan_id and run["tags"]["agentflow/tenant"] == "acme"

    assert {t["task_id"] for t in doc["tasks"]} == set(spec.task_ids)
    assert all(
        t["status"] == "succeeded" and t["agent"] and t["run_id"] == result.run_id for t in doc["tasks"]
    )
    assert [a["action"] for a in doc["approvals"]] == ["approval.approve"]
    assert doc["approvals"][0]["detail"]["comment"] == "refund checked"

    calls = doc["llm_calls"]
    assert calls and {c["task_id"] for c in calls} == set(spec.task_ids)
    assert all(c["provider"] == "offline-extractive" and c["model"] and c["input_tokens"] for c in calls)

    # From the `retrievals` row the task wrote: the generation table it searched, hits with their scores.
    retrieval = doc["retrieval"]
    assert retrieval["source"] == "retrievals"
    [search] = retrieval["searches"]
    assert (search["task_id"], search["run_id"], search["collection"]) == (
        "retrieve",
        result.run_id,
        collection,
    )
    assert search["index_name"] == index_name and search["trace_id"] == "ab" * 16 and search["error"] is None
    assert search["query"] and search["k"] == 5 and search["mode"] == "hybrid"
    assert {h["chunk_id"] for h in search["hits"]} == {f"{collection}-{name}-0" for name in DOCS}
    assert all(h["score"] > 0 for h in search["hits"])
    assert {c["task_id"] for c in retrieval["chunks"]} == {"retrieve"}
    assert {(d["document"], d["version"]) for d in retrieval["documents"]} == {
        (name, f"v-{name}") for name in DOCS
    }
    [index] = retrieval["indexes"]
    assert index["collection"] == collection and index["index"] == index_name
    assert (index["backend"], index["model"], index["status"]) == ("pgvector", "test-hash-16", "live")

    times = [e["at"] for e in doc["audit_log"]]
    assert times == sorted(times) and len(times) >= len(spec.task_ids) + 2
    actions = [e["action"] for e in doc["audit_log"]]
    assert actions[0] == "workflow.running" and "workflow.succeeded" in actions
    assert actions[-1] == "approval.approve"

    assert as_text.exit_code == 0, as_text.output
    text = as_text.output
    for section in ("request", "spec", "dagster runs", "tasks", "approvals", "llm calls", "audit log"):
        assert f"\n{section}\n" in text
    assert f"event {req.event_id}" in text and result.run_id in text
    assert f"index {collection} -> {index_name}" in text and "refunds.md version v-refunds.md" in text
    assert "\nretrievals\n" in text and f"task retrieve  run {result.run_id}" in text

    # A rebuild since: the audit still names the index searched, now marked replaced.
    _index(pg_url, collection)[0].close()
    engine = make_engine(pg_url)
    rebuilt = load_audit(engine, req.plan_id)
    assert rebuilt is not None
    [index] = rebuilt["retrieval"]["indexes"]
    assert index["index"] == index_name and index["status"] == "replaced"

    # A plan recorded before migration 0006 (no rows): passages parsed from its prompts instead.
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM retrievals WHERE plan_id = :p"), {"p": req.plan_id})
    old = load_audit(engine, req.plan_id)
    engine.dispose()
    assert old is not None and old["retrieval"]["source"] == "prompts"
    assert {(d["document"], d["version"]) for d in old["retrieval"]["documents"]} == {
        (name, f"v-{name}") for name in DOCS
    }
    assert "passages parsed from the stored prompts" in render_audit(old)

    store.drop(collection)
    store.close()


def test_unknown_plan_is_an_error(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTFLOW_POSTGRES_URL", pg_url)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))  # no dagster.yaml: statuses unknown, not a failure
    get_settings.cache_clear()
    try:
        out = CliRunner().invoke(audit, ["plan-00000000000000000000"])
    finally:
        get_settings.cache_clear()
    assert out.exit_code == 1
    assert "no workflow with plan_id 'plan-00000000000000000000'" in out.output
