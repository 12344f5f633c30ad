"""Each shipped workflow end to end in-process, on the offline provider and on the loopback test server,
with real Postgres, Redis and object store; idempotent re-runs, fallbacks and op retries."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa
import yaml

from agentflow_dagster.names import BUCKET_ARTIFACTS
from agentflow_dagster.observability import llm_records
from agentflow_dagster.workflows.loader import load_spec_file, load_specs, register_specs
from ops.compiler import build_workflow_jobs
from resources.object_store import LocalObjectStore
from tests.ops.conftest import Resources, execute, new_request, rows, server_llm
from tests.support import llm_server as script
from tests.support.llm_server import LLMTestServer

# Workflows with an approval gate stop at it; tests/approvals runs those.
SPECS = {n: s for n, s in load_specs().items() if not any(t.requires_approval for t in s.tasks)}
JOBS = {job.name: job for job in build_workflow_jobs(SPECS.values())}
INPUTS = {
    "research_report": {"topic": "Caching strategies for LLM inference. How do KV caches reduce latency?"},
    "support_triage": {
        "message": "I was charged twice for my subscription this month. Please refund it asap."
    },
    "summarize_with_fallback": {
        "document": "Dagster is an orchestrator. It models data assets. Jobs are graphs of ops."
    },
}


def _system_prompt_has(text: str):
    return lambda body: text in body["messages"][0]["content"]


def test_shipped_workflows_offline(workflow_resources: Resources, engine: sa.Engine) -> None:
    resources = workflow_resources()
    for name, spec in SPECS.items():
        req = new_request(spec, INPUTS[name])
        result = execute(JOBS[name], spec, req, resources)
        assert result.success, name
        output = result.output_for_node("workflow_result")
        assert output["offline"] and output["providers"] == ["offline-extractive"]
        assert set(output["tasks"]) == set(spec.result_tasks())
        run = rows(
            engine,
            "SELECT status, version, dagster_run_ids, output FROM workflow_runs WHERE plan_id = :p",
            p=req.plan_id,
        )[0]
        assert (
            run.status == "succeeded"
            and run.version == spec.version
            and run.dagster_run_ids == [result.run_id]
        )
        assert run.output["providers"] == ["offline-extractive"]
        tasks = rows(
            engine,
            "SELECT DISTINCT split_part(task_id, '[', 1) AS task FROM task_runs WHERE plan_id = :p",
            p=req.plan_id,
        )
        assert {r.task for r in tasks} == set(spec.task_ids)
        calls = rows(engine, "SELECT DISTINCT provider FROM llm_calls WHERE plan_id = :p", p=req.plan_id)
        assert [c.provider for c in calls] == ["offline-extractive"]
    defs = rows(engine, "SELECT name, version, spec_hash FROM workflow_definitions")
    assert {(d.name, d.version, d.spec_hash) for d in defs} >= {
        (s.name, s.version, s.spec_hash) for s in SPECS.values()
    }
    # The fan-out produced one research op per planned sub-question.
    plan_rows = rows(
        engine, "SELECT count(DISTINCT task_id) AS n FROM task_runs WHERE task_id LIKE 'research[%'"
    )
    assert plan_rows[0].n >= 2


def test_rerun_of_a_plan_reuses_task_outputs(workflow_resources: Resources, engine: sa.Engine) -> None:
    spec = SPECS["support_triage"]
    req = new_request(spec, INPUTS["support_triage"])
    first = execute(JOBS[spec.name], spec, req, workflow_resources())
    second = execute(JOBS[spec.name], spec, req, workflow_resources())
    assert first.success and second.success
    assert second.output_for_node("workflow_result") == first.output_for_node("workflow_result")
    reused = rows(engine, "SELECT task_id, reused FROM task_runs WHERE run_id = :r", r=second.run_id)
    assert len(reused) == len(spec.tasks) and all(r.reused for r in reused)
    calls = rows(engine, "SELECT count(*) AS n FROM llm_calls WHERE run_id = :r", r=second.run_id)
    assert calls[0].n == 0
    run = rows(engine, "SELECT dagster_run_ids FROM workflow_runs WHERE plan_id = :p", p=req.plan_id)[0]
    assert run.dagster_run_ids == [first.run_id, second.run_id]


def test_inputs_by_reference(
    workflow_resources: Resources, engine: sa.Engine, object_store_dir: Path
) -> None:
    spec = SPECS["summarize_with_fallback"]
    key = "inputs/large-document.json"
    document = "Object stores hold large payloads. Run config only carries a reference. " * 200
    LocalObjectStore(object_store_dir).put(BUCKET_ARTIFACTS, key, json.dumps({"document": document}).encode())
    req = new_request(spec, {}, inputs_ref=key)
    result = execute(JOBS[spec.name], spec, req, workflow_resources())
    assert result.success
    assert result.output_for_node("request")["inputs"]["document"] == document
    run = rows(engine, "SELECT inputs FROM workflow_runs WHERE plan_id = :p", p=req.plan_id)[0]
    assert run.inputs == {"inputs_ref": key}


def test_invalid_inputs_fail_the_workflow(workflow_resources: Resources, engine: sa.Engine) -> None:
    spec = SPECS["support_triage"]
    req = new_request(spec, {"message": "x" * 9000})
    result = execute(JOBS[spec.name], spec, req, workflow_resources())
    assert not result.success
    run = rows(engine, "SELECT status, error FROM workflow_runs WHERE plan_id = :p", p=req.plan_id)[0]
    assert run.status == "failed" and "max_length is 8000" in run.error


def test_shipped_workflows_on_the_test_server(
    workflow_resources: Resources, engine: sa.Engine, llm_server: LLMTestServer
) -> None:
    resources = workflow_resources(llm=server_llm(llm_server))
    for name, spec in SPECS.items():
        before = llm_server.count()
        req = new_request(spec, INPUTS[name])
        result = execute(JOBS[name], spec, req, resources)
        assert result.success, name
        output = result.output_for_node("workflow_result")
        assert not output["offline"] and output["providers"] == ["openai"]
        calls = rows(
            engine, "SELECT provider, model, cost_usd FROM llm_calls WHERE plan_id = :p", p=req.plan_id
        )
        assert len(calls) == llm_server.count() - before
        assert {c.provider for c in calls} == {"openai"}
    # The research fan-out called the server once per sub-question (the server plans two).
    assert llm_server.count(_system_prompt_has("You are a researcher")) == 2


def test_fallback_runs_when_retries_are_exhausted(
    workflow_resources: Resources, engine: sa.Engine, llm_server: LLMTestServer
) -> None:
    spec = SPECS["summarize_with_fallback"]
    llm_server.rule(lambda body: body["model"] == "reasoning-model", script.server_error(500))
    req = new_request(spec, INPUTS[spec.name])
    result = execute(
        JOBS[spec.name], spec, req, workflow_resources(llm=server_llm(llm_server, max_attempts=2))
    )
    assert result.success
    summarize = result.output_for_node("summarize")
    assert (
        summarize["fallback_used"]
        and summarize["agent"] == "brief_summarizer"
        and summarize["model"] == "fast-model"
    )
    # 2 Dagster attempts (max_retries=1) x 2 HTTP attempts each, then one fallback call.
    assert llm_server.count(lambda b: b["model"] == "reasoning-model") == 4
    attempts = rows(
        engine,
        "SELECT agent, attempt, status FROM task_runs WHERE plan_id = :p AND task_id = 'summarize' "
        "ORDER BY id",
        p=req.plan_id,
    )
    assert [(a.agent, a.attempt, a.status) for a in attempts] == [
        ("summarizer", 1, "failed"),
        ("summarizer", 2, "failed"),
        ("brief_summarizer", 2, "succeeded"),
    ]
    failed_calls = rows(
        engine, "SELECT count(*) AS n FROM llm_calls WHERE plan_id = :p AND error IS NOT NULL", p=req.plan_id
    )
    assert failed_calls[0].n == 4
    audit = rows(engine, "SELECT action FROM audit_log WHERE plan_id = :p", p=req.plan_id)
    assert "task.fallback" in {a.action for a in audit}


def _fast_copy(tmp_path: Path, name: str, new_name: str) -> Path:
    """A shipped spec under another name with near-zero op retry delays (keeps the test fast)."""
    raw = yaml.safe_load((Path(SPECS[name].source_file)).read_text())
    raw["name"] = new_name
    for task in raw["tasks"]:
        task["retry"]["delay_s"] = 0.01
    path = tmp_path / f"{new_name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_op_retry_then_reexecution_reuses_completed_tasks(
    workflow_resources: Resources, engine: sa.Engine, llm_server: LLMTestServer, tmp_path: Path
) -> None:
    spec = load_spec_file(_fast_copy(tmp_path, "support_triage", "triage_reexec_test"))
    job = build_workflow_jobs([spec])[0]
    resources = workflow_resources(llm=server_llm(llm_server, max_attempts=2))
    # classify: its first Dagster attempt exhausts the LLM attempts, the op retry succeeds.
    llm_server.script(script.rate_limited("0"), script.server_error(502))
    # draft: down for the whole first run, so the run fails after every retry.
    drafting = _system_prompt_has("You draft replies")
    llm_server.rule(drafting, script.server_error(500))
    req = new_request(spec, INPUTS["support_triage"])
    first = execute(job, spec, req, resources)
    assert not first.success
    classify = rows(
        engine,
        "SELECT attempt, status FROM task_runs WHERE plan_id = :p AND task_id = 'classify' ORDER BY id",
        p=req.plan_id,
    )
    assert [(c.attempt, c.status) for c in classify] == [(1, "failed"), (2, "succeeded")]
    assert llm_server.count(drafting) == 2 * (spec.task("draft").retry.max_retries + 1)
    run = rows(engine, "SELECT status, error FROM workflow_runs WHERE plan_id = :p", p=req.plan_id)[0]
    assert run.status == "failed" and run.error.startswith("draft:")

    llm_server.reset()  # the endpoint recovers; re-execute the same plan
    second = execute(job, spec, req, resources)
    assert second.success
    # Only draft and policy_check called the LLM; classify, route and retrieve were reused.
    assert llm_server.count() == 2
    assert llm_server.count(drafting) == 1 and llm_server.count(_system_prompt_has("You check replies")) == 1
    reused = rows(engine, "SELECT task_id FROM task_runs WHERE run_id = :r AND reused", r=second.run_id)
    assert {r.task_id for r in reused} == {"classify", "route", "retrieve"}
    assert (
        rows(engine, "SELECT status FROM workflow_runs WHERE plan_id = :p", p=req.plan_id)[0].status
        == "succeeded"
    )


def test_register_specs_is_idempotent_and_versions_are_immutable(engine: sa.Engine, tmp_path: Path) -> None:
    spec = load_spec_file(_fast_copy(tmp_path, "summarize_with_fallback", "registry_test"))
    assert register_specs(engine, [spec]) == [("registry_test", "1.0.0", "registered")]
    assert register_specs(engine, [spec]) == [("registry_test", "1.0.0", "unchanged")]
    changed = spec.model_copy(update={"description": "edited without a version bump"})
    try:
        register_specs(engine, [changed])
    except ValueError as exc:
        assert "needs a new version" in str(exc)
    else:
        raise AssertionError("a changed spec under the same version must be refused")


def test_task_metadata_totals_match_the_llm_calls_rows(
    workflow_resources: Resources, engine: sa.Engine, llm_server: LLMTestServer
) -> None:
    """A first attempt sums its own llm_calls rows in memory (no query): the op metadata must equal what
    `task_llm_totals` reads from the table, failed HTTP attempts and a schema retry included; a retried
    op (second Dagster attempt) reads the table."""
    spec = SPECS["support_triage"]
    # classify's first attempt: a 500, then an answer that fails the schema (a schema retry), then ok.
    llm_server.script(script.server_error(500), script.bad_schema())
    req = new_request(spec, INPUTS["support_triage"])
    result = execute(JOBS[spec.name], spec, req, workflow_resources(llm=server_llm(llm_server)))
    assert result.success
    seen = {}
    for event in result.all_events:
        if event.event_type_value != "STEP_OUTPUT" or event.step_key in ("request", "workflow_result"):
            continue
        meta = {k: v.value for k, v in event.step_output_data.metadata.items()}
        task_key = event.step_key
        if meta["reused"]:
            continue
        stored = llm_records.task_llm_totals(engine, req.plan_id, task_key, result.run_id)
        assert {k: meta.get(k) for k in stored} == stored, task_key
        assert not any(k.startswith(("llm_", "eval_")) and k not in stored for k in meta), task_key
        seen[task_key] = stored
    assert seen["classify"]["llm_calls"] == 3 and seen["classify"]["llm_errors"] == 1
    assert seen["classify"]["eval_schema_valid_rate"] == 0.5
    assert sum(t["llm_calls"] for t in seen.values()) == llm_server.count()
