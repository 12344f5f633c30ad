"""Operating workflows on a real stack: cancel queued and running runs, retry from failure, list plans and
waiting approvals, through the CLI and the API alike, with scopes, tenant isolation and audit rows."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dagster as dg
import pytest
from fastapi.testclient import TestClient

from agentflow_dagster.api import create_app
from agentflow_dagster.api.config import ApiConfig
from agentflow_dagster.api.keys import create_key
from agentflow_dagster.settings import Settings
from tests.chaos.test_stack_faults import prompt_has
from tests.support.live_stack import LiveStack, request, traceparent, wait_until
from tests.support.llm_server import LLMTestServer, server_error, slow

pytestmark = [pytest.mark.stack, pytest.mark.slow]
WORKFLOW = "summarize_with_fallback"
SUMMARIZER = "You summarize documents faithfully"
REVIEWER = "You are a critical reviewer"
DOC = "Kafka carries events. Dagster runs the workflow. Postgres keeps the history."


class Switch:
    """A scripted LLM answer for one agent, on while the test needs it."""

    def __init__(self, server: LLMTestServer, text: str, action: Any) -> None:
        self.on = False
        matches = prompt_has(text)
        server.rule(lambda body: self.on and matches(body), action)


@pytest.fixture(scope="module")
def api(stack: LiveStack) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=stack.data_dir,
        postgres_url=stack.pg_url,
        redis_url=f"redis://127.0.0.1:{stack.ports['redis']}/0",
        kafka_bootstrap_servers=stack.bootstrap,
    )
    config = ApiConfig(
        dagster_graphql_url=f"http://127.0.0.1:{stack.ports['webserver']}",
        preload_retriever=False,
        kafka_timeout_s=5,
    )
    with TestClient(create_app(settings, config)) as client:
        yield client


def key(stack: LiveStack, tenant: str, *scopes: str) -> dict[str, str]:
    secret, _ = create_key(stack.engine, tenant, scopes)
    return {"Authorization": f"Bearer {secret}"}


def submit(stack: LiveStack, tenant: str, n: int, workflow: str = WORKFLOW) -> list[Any]:
    """n requests of one tenant on one partition, in order; returns the requests."""
    inputs = {"document": DOC} if workflow == WORKFLOW else {"message": "Please refund the double charge."}
    reqs = [request(workflow, inputs, tenant) for _ in range(n)]
    stack.produce([(0, r.model_dump_json().encode(), traceparent()) for r in reqs])
    return reqs


def dagster_status(stack: LiveStack, event_id: str) -> list[dg.DagsterRunStatus]:
    return [r.status for r in stack.runs_by_event([event_id])[event_id]]


def audit_rows(stack: LiveStack, plan_id: str, action: str) -> list[Any]:
    return stack.rows(
        "SELECT actor, subject, detail FROM audit_log WHERE plan_id = :p AND action = :a ORDER BY id",
        p=plan_id,
        a=action,
    )


def test_cancel_a_queued_and_two_running_workflows(
    stack: LiveStack, llm: LLMTestServer, api: TestClient
) -> None:
    """Two runs hold the tenant's two slots (review hangs), the third queues; all three are canceled."""
    hang = Switch(llm, REVIEWER, slow(90))
    hang.on = True
    try:
        reqs = submit(stack, "ops_cancel", 3)
        events = [r.event_id for r in reqs]

        def shape() -> list[str]:
            return sorted(str(s[0].value) for e in events if (s := dagster_status(stack, e)))

        submitter = key(stack, "ops_cancel", "submit")
        wait_until(lambda: shape() == ["QUEUED", "STARTED", "STARTED"], 120, "2 started runs and 1 queued")
        wait_until(lambda: len(stack.history(events)) == 3, 30, "the three workflow_runs rows")
        by_status: dict[dg.DagsterRunStatus, list[Any]] = {}
        for r in reqs:
            by_status.setdefault(dagster_status(stack, r.event_id)[0], []).append(r)
        queued = by_status[dg.DagsterRunStatus.QUEUED][0]
        running_api, running_cli = by_status[dg.DagsterRunStatus.STARTED]

        # Quickly, before the hung review's own timeouts fail these runs: the queued one first (through
        # the API: Dagster cancels it from the queue), then both running ones at once (API and CLI).
        ok = api.post(
            f"/v1/workflows/{queued.plan_id}/cancel", json={"reason": "queued by mistake"}, headers=submitter
        )
        assert ok.status_code == 202 and len(ok.json()["runs"]) == 1, ok.text
        with ThreadPoolExecutor(2) as pool:
            by_cli = pool.submit(
                stack.cli,
                "cancel",
                running_cli.plan_id,
                "--reason",
                "runaway",
                "--actor",
                "ops:alice",
                "--json",
            )
            by_api = pool.submit(api.post, f"/v1/workflows/{running_api.plan_id}/cancel", headers=submitter)
            done, ok = by_cli.result(), by_api.result()
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout)["action"] == "cancel"
        assert ok.status_code == 202 and ok.json()["plan_id"] == running_api.plan_id and ok.json()["runs"]

        results = stack.results(events, timeout=120)
        assert {e: [r.status for r in rs] for e, rs in results.items()} == dict.fromkeys(events, ["canceled"])
        wait_until(
            lambda: stack.history(events) == dict.fromkeys(events, "canceled"), 60, "plans shown canceled"
        )
        assert all(dagster_status(stack, e) == [dg.DagsterRunStatus.CANCELED] for e in events)
        with stack.instance() as inst:  # canceled from the queue: its run never started
            [never] = stack.runs_by_event([queued.event_id])[queued.event_id]
            record = inst.get_run_record_by_id(never.run_id)
        assert record is not None and record.start_time is None
        assert (
            api.get(f"/v1/workflows/{queued.plan_id}", headers=key(stack, "ops_cancel", "read")).json()[
                "status"
            ]
            == "canceled"
        )
    finally:
        hang.on = False

    rows = audit_rows(stack, running_cli.plan_id, "workflow.cancel")
    assert [(r.actor, r.detail["reason"], r.detail["tenant"]) for r in rows] == [
        ("ops:alice", "runaway", "ops_cancel")
    ]
    rows = audit_rows(stack, queued.plan_id, "workflow.cancel")
    assert (
        len(rows) == 1
        and rows[0].actor.startswith("key:")
        and rows[0].detail["reason"] == "queued by mistake"
    )
    # Scopes and tenant isolation (checked before the plan's state).
    url = f"/v1/workflows/{running_api.plan_id}/cancel"
    assert api.post(url, headers=key(stack, "ops_cancel", "read")).status_code == 403
    other = api.post(url, headers=key(stack, "ops_other", "submit"))
    assert other.status_code == 404 and "not found" in other.json()["detail"], other.text
    # Finished: a second cancel is refused and not audited.
    again = stack.cli("cancel", queued.plan_id)
    assert again.returncode == 1 and "has finished (canceled)" in again.stderr
    assert len(audit_rows(stack, queued.plan_id, "workflow.cancel")) == 1


def test_retry_a_failed_workflow_from_failure(stack: LiveStack, llm: LLMTestServer, api: TestClient) -> None:
    """The review task fails for good; after the fault is gone, retry re-runs only the review."""
    broken = Switch(llm, REVIEWER, server_error(500))
    broken.on = True
    try:
        [req] = submit(stack, "ops_retry", 1)
        [failed] = stack.results([req.event_id], timeout=180)[req.event_id]
        assert failed.status == "failed"
    finally:
        broken.on = False
    summarize_calls = llm.count(prompt_has(SUMMARIZER))
    headers = key(stack, "ops_retry", "submit", "read")
    assert (
        api.post(f"/v1/workflows/{req.plan_id}/retry", headers=key(stack, "ops_x", "submit")).status_code
        == 404
    )

    # The CLI and the API retry at once: one launches a child run, the other is refused.
    with ThreadPoolExecutor(2) as pool:
        by_cli = pool.submit(stack.cli, "retry", req.plan_id, "--reason", "LLM endpoint fixed")
        by_api = pool.submit(
            api.post, f"/v1/workflows/{req.plan_id}/retry", json={"reason": "via API"}, headers=headers
        )
        done, answer = by_cli.result(), by_api.result()
    assert sorted([done.returncode, answer.status_code]) in ([0, 409], [1, 202]), done.stderr + answer.text
    refusal = answer.json()["detail"] if answer.status_code == 409 else done.stderr
    # The loser waited on the lock, or came after the winner's child started (the CLI starts slower).
    assert re.search(r"is (queued|running|succeeded); only failed or canceled plans are retried", refusal)
    reason = "LLM endpoint fixed" if done.returncode == 0 else "via API"
    results = stack.results([req.event_id], timeout=180, per_event=2)[req.event_id]
    assert [r.status for r in results] == ["failed", "succeeded"]
    child = results[1].run_id
    assert child != failed.run_id
    wait_until(lambda: stack.history([req.event_id]) == {req.event_id: "succeeded"}, 60, "plan succeeded")

    # From failure: the child run had no summarize step and no summarizer LLM call was made again.
    with stack.instance() as inst:
        steps = {s.step_key for s in inst.get_run_step_stats(child)}
        run = inst.get_run_by_id(child)
    assert run is not None and run.parent_run_id == failed.run_id
    assert len(stack.runs_by_event([req.event_id])[req.event_id]) == 2  # the failed run and one child
    assert not any(k.startswith("summarize") for k in steps) and any("key_points_review" in k for k in steps)
    assert llm.count(prompt_has(SUMMARIZER)) == summarize_calls
    task_rows = stack.rows("SELECT task_id, run_id FROM task_runs WHERE plan_id = :p", p=req.plan_id)
    assert {r.run_id for r in task_rows if r.task_id == "summarize"} == {failed.run_id}

    rows = audit_rows(stack, req.plan_id, "workflow.retry")
    assert len(rows) == 1 and rows[0].subject == child
    assert rows[0].detail["parent_run_id"] == failed.run_id and rows[0].detail["reason"] == reason
    # Succeeded now: nothing to retry.
    assert api.post(f"/v1/workflows/{req.plan_id}/retry", headers=headers).status_code == 409


def test_lists_of_workflows_and_waiting_approvals(stack: LiveStack, api: TestClient) -> None:
    """`runs list` and GET /v1/workflows filter by tenant, status, workflow, time; approvals: deadlines."""
    [req] = submit(stack, "ops_list", 1, workflow="publish_with_approval")
    [result] = stack.results([req.event_id], timeout=180)[req.event_id]
    assert result.status == "waiting_approval"

    done = stack.cli("approvals", "--json")
    assert done.returncode == 0, done.stderr
    waiting = [a for a in json.loads(done.stdout) if a["plan_id"] == req.plan_id]
    assert [(a["task_id"], a["tenant"]) for a in waiting] == [("publish", "ops_list")] and waiting[0][
        "deadline"
    ]
    text = stack.cli("approvals", "--tenant", "ops_list").stdout
    assert req.plan_id in text and "DEADLINE" in text

    reader = key(stack, "ops_list", "read")
    body = api.get("/v1/approvals", headers=reader).json()
    assert [(a["plan_id"], a["task_id"]) for a in body["approvals"]] == [(req.plan_id, "publish")]
    assert api.get("/v1/approvals", headers=key(stack, "ops_nobody", "read")).json() == {"approvals": []}

    # A plan waiting for approval has no run to cancel: the answer says how to end it.
    refused = api.post(f"/v1/workflows/{req.plan_id}/cancel", headers=key(stack, "ops_list", "admin"))
    assert refused.status_code == 409 and "--reject" in refused.json()["detail"]

    listed = api.get("/v1/workflows", params={"status": "waiting_approval"}, headers=reader).json()
    assert [w["plan_id"] for w in listed["workflows"]] == [req.plan_id]
    assert api.get("/v1/workflows", params={"status": "failed"}, headers=reader).json() == {"workflows": []}
    assert api.get("/v1/workflows", params={"since": "2999-01-01T00:00:00Z"}, headers=reader).json() == {
        "workflows": []
    }
    assert api.get("/v1/workflows", headers=key(stack, "ops_nobody", "read")).json() == {"workflows": []}
    assert api.get("/v1/workflows", headers=key(stack, "ops_list", "submit")).status_code == 403

    done = stack.cli("runs", "list", "--tenant", "ops_list", "--since", "1h", "--json")
    assert [r["plan_id"] for r in json.loads(done.stdout)] == [req.plan_id]
    done = stack.cli("runs", "list", "--workflow", WORKFLOW, "--status", "canceled", "--limit", "2")
    assert done.returncode == 0 and "PLAN_ID" in done.stdout
    assert req.plan_id not in done.stdout
    bad = stack.cli("runs", "list", "--since", "yesterday")
    assert bad.returncode == 2 and "age like 30m" in bad.stderr


def test_submit_wait_prints_plain_progress_when_not_on_a_terminal(
    stack: LiveStack, llm: LLMTestServer
) -> None:
    """Tasks done of total and the running task, one line per change on stderr; the result on stdout."""
    held = Switch(llm, REVIEWER, slow(4))
    held.on = True
    try:
        done = stack.cli(
            "submit",
            WORKFLOW,
            "--input",
            f"document={DOC}",
            "--tenant",
            "ops_submit",
            "--wait",
            "--timeout",
            "180",
        )
    finally:
        held.on = False
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.split("\n", 1)[1])  # first line: event_id=... plan_id=...
    assert result["status"] == "succeeded"
    lines = [line.split("] ", 1)[1] for line in done.stderr.splitlines() if line.startswith("[")]
    assert f"workflow {WORKFLOW}: 1/2 tasks | running: key_points_review" in lines, done.stderr
    assert len(lines) == len(set(lines)) and "\x1b[" not in done.stderr  # plain, one line per change
