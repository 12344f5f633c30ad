"""Human approvals end to end: a gate pauses the workflow, a decision (API or event) resumes it in a new run
that reuses every completed task, a rejection or a timeout ends it, and the audit log says who decided."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest
import yaml
from fastapi.testclient import TestClient

from agentflow_dagster import names
from agentflow_dagster.events import DeadLetter, plan_id_for
from agentflow_dagster.workflows.loader import load_spec_file, load_specs
from agentflow_dagster.workflows.spec import SpecError
from sensors.approvals import DLQ_TOPIC, TAG_RESUMED_FROM
from tests.api.conftest import Keys
from tests.approvals.conftest import MESSAGE, SHIPPED, Stack, variant
from tests.sensors.conftest import end_cursor, read_all

MakeStack = Callable[..., Stack]


def _pause(stack: Stack) -> tuple[str, dg.DagsterRun]:
    """Submit a request and run it up to the gate; returns (plan_id, the paused run)."""
    event_id = stack.submit()
    [request] = stack.tick_requests()
    run = stack.launch(request)
    assert run.status == dg.DagsterRunStatus.SUCCESS  # the run stops cleanly, it does not fail
    return plan_id_for(event_id), run


def _status(stack: Stack, plan_id: str) -> tuple[str, str | None]:
    [row] = stack.rows("SELECT status, error FROM workflow_runs WHERE plan_id = :p", p=plan_id)
    return row.status, row.error


def _task_statuses(stack: Stack, plan_id: str, run: dg.DagsterRun) -> dict[str, tuple[str, bool]]:
    rows = stack.rows(
        "SELECT task_id, status, reused FROM task_runs WHERE plan_id = :p AND run_id = :r ORDER BY id",
        p=plan_id,
        r=run.run_id,
    )
    return {r.task_id: (r.status, r.reused) for r in rows}


def _llm_calls(stack: Stack, run: dg.DagsterRun) -> dict[str, int]:
    rows = stack.rows(
        "SELECT task_id, count(*) AS n FROM llm_calls WHERE run_id = :r GROUP BY task_id", r=run.run_id
    )
    return {r.task_id: r.n for r in rows}


def _audit(stack: Stack, plan_id: str) -> list[tuple[str, str, str, dict]]:
    rows = stack.rows(
        "SELECT action, actor, subject, detail FROM audit_log WHERE plan_id = :p ORDER BY id", p=plan_id
    )
    return [(r.action, r.actor, r.subject, r.detail) for r in rows]


def _actions(stack: Stack, plan_id: str) -> list[str]:
    return [a[0] for a in _audit(stack, plan_id)]


def test_approved_through_the_api_resumes_and_reuses_completed_tasks(
    make_stack: MakeStack, client: TestClient, keys: Keys
) -> None:
    stack = make_stack()
    headers = keys("approvals", "submit", "read", "approve")
    submitted = client.post(
        "/v1/workflows", json={"workflow": SHIPPED.name, "inputs": {"message": MESSAGE}}, headers=headers
    )
    assert submitted.status_code == 202, submitted.text
    plan_id, event_id = submitted.json()["plan_id"], submitted.json()["event_id"]
    [request] = stack.tick_requests()
    assert request.run_key == event_id
    paused = stack.launch(request)
    assert paused.status == dg.DagsterRunStatus.SUCCESS

    # Paused: recorded as waiting, the gate's task shown as waiting, nothing downstream ran.
    assert _status(stack, plan_id) == ("waiting_approval", None)
    assert _task_statuses(stack, plan_id, paused) == {
        "classify": ("succeeded", False),
        "draft": ("succeeded", False),
        "publish": ("waiting_approval", False),
    }
    assert set(_llm_calls(stack, paused)) == {"classify", "draft"}
    # A late start event of the paused run does not turn the plan back to running.
    stack.evaluate(stack.started, paused, dg.DagsterEventType.RUN_START)
    state = client.get(f"/v1/workflows/{plan_id}", headers=headers).json()
    assert state["status"] == "waiting_approval" and state["finished_at"] is None
    assert {t["task_id"]: t["status"] for t in state["tasks"]}["publish"] == "waiting_approval"
    [waiting] = stack.results()
    assert (waiting.status, waiting.run_id, waiting.event_id) == ("waiting_approval", paused.run_id, event_id)
    assert waiting.error is not None and "'publish'" in waiting.error and waiting.output is None
    assert stack.tick_approvals() == []  # nothing decided yet

    # The human decides through the API; the sensor resumes the plan in a new run.
    comment = "refund amount checked against the invoice"
    decided = client.post(
        f"/v1/workflows/{plan_id}/approvals",
        json={"task_id": "publish", "decision": "approve", "comment": comment},
        headers=headers,
    )
    assert decided.status_code == 202, decided.text
    approval_event = decided.json()["event_id"]
    [resume] = stack.tick_approvals()
    assert resume.run_key == approval_event and resume.job_name == SHIPPED.name
    assert resume.tags[TAG_RESUMED_FROM] == paused.run_id and resume.tags[names.TAG_EVENT_ID] == event_id
    resumed = stack.launch(resume)
    assert resumed.status == dg.DagsterRunStatus.SUCCESS

    # Completed tasks were reused, not re-called: only the approved task called the LLM.
    assert _task_statuses(stack, plan_id, resumed) == {
        "classify": ("succeeded", True),
        "draft": ("succeeded", True),
        "publish": ("succeeded", False),
    }
    assert set(_llm_calls(stack, resumed)) == {"publish"}
    [run_row] = stack.rows(
        "SELECT status, output, dagster_run_ids FROM workflow_runs WHERE plan_id = :p", p=plan_id
    )
    assert run_row.status == "succeeded" and run_row.dagster_run_ids == [paused.run_id, resumed.run_id]
    assert set(run_row.output["tasks"]) == {"draft", "publish"}
    assert [(r.status, r.run_id) for r in stack.results()] == [
        ("waiting_approval", paused.run_id),
        ("succeeded", resumed.run_id),
    ]
    assert client.get(f"/v1/workflows/{plan_id}", headers=headers).json()["status"] == "succeeded"
    assert stack.tick_approvals() == []  # the resume run exists: never requested again

    # The audit trail: who approved what and when, in order.
    audit = _audit(stack, plan_id)
    actions = [a[0] for a in audit]
    order = ["workflow.waiting_approval", "approval.approve", "approval.approved", "approval.applied"]
    assert [actions.index(a) for a in order] == sorted(actions.index(a) for a in order)
    assert actions.index("approval.applied") < actions.index("workflow.succeeded")
    api_row = next(a for a in audit if a[0] == "approval.approve")
    approver = api_row[1]
    assert approver.startswith("key:") and api_row[2] == "publish" and api_row[3]["comment"] == comment
    recorded = next(a for a in audit if a[0] == "approval.approved")
    assert recorded[1] == approver and recorded[2] == "publish"
    assert recorded[3]["comment"] == comment and recorded[3]["event_id"] == approval_event
    assert recorded[3]["outcome"] == "resumes"
    decided_at = datetime.fromisoformat(recorded[3]["decided_at"])
    assert abs((datetime.now(UTC) - decided_at).total_seconds()) < 120
    applied = next(a for a in audit if a[0] == "approval.applied")
    assert applied[1] == "agentflow.ops" and applied[3]["decided_by"] == approver
    assert applied[3]["run_id"] == resumed.run_id and applied[3]["event_id"] == approval_event
    [gate] = stack.rows("SELECT * FROM workflow_approvals WHERE plan_id = :p", p=plan_id)
    assert (gate.status, gate.decided_by, gate.comment) == ("approved", approver, comment)
    assert (gate.waiting_run_id, gate.applied_run_id) == (paused.run_id, resumed.run_id)
    assert gate.requested_at <= gate.decided_at <= gate.applied_at


def test_rejected_ends_the_workflow_with_the_reason(
    make_stack: MakeStack, client: TestClient, keys: Keys
) -> None:
    stack = make_stack()
    plan_id, paused = _pause(stack)
    stack.decide(plan_id, "reject", "key:reviewer1", "the tone is wrong")
    [resume] = stack.tick_approvals()
    resumed = stack.launch(resume)
    assert resumed.status == dg.DagsterRunStatus.SUCCESS

    reason = "publish: rejected by key:reviewer1: the tone is wrong"
    assert _status(stack, plan_id) == ("rejected", reason)
    # Nothing downstream of the gate ran, and the completed tasks were not paid for twice.
    assert _task_statuses(stack, plan_id, resumed) == {
        "classify": ("succeeded", True),
        "draft": ("succeeded", True),
        "publish": ("rejected", False),
    }
    assert _llm_calls(stack, resumed) == {}
    assert (
        stack.rows("SELECT 1 FROM task_outputs WHERE plan_id = :p AND task_id = 'publish'", p=plan_id) == []
    )
    [waiting, rejected] = stack.results()
    assert waiting.status == "waiting_approval"
    assert (rejected.status, rejected.error, rejected.run_id) == ("rejected", reason, resumed.run_id)

    audit = _audit(stack, plan_id)
    actions = [a[0] for a in audit]
    assert "workflow.succeeded" not in actions and "run.rejected" in actions
    decision = next(a for a in audit if a[0] == "approval.rejected")
    assert decision[1] == "key:reviewer1" and decision[3]["comment"] == "the tone is wrong"
    ended = next(a for a in audit if a[0] == "workflow.rejected")
    assert ended[3]["error"] == reason and ended[3]["decided_by"] == "key:reviewer1"
    # Finished: the API refuses further decisions.
    late = client.post(
        f"/v1/workflows/{plan_id}/approvals",
        json={"task_id": "publish", "decision": "approve"},
        headers=keys("default", "approve"),
    )
    assert late.status_code == 409 and "rejected" in late.json()["detail"]


def test_duplicate_and_late_events_launch_one_run(make_stack: MakeStack) -> None:
    stack = make_stack()
    plan_id, _ = _pause(stack)
    event = stack.decide(plan_id, "approve", "key:approver2")
    stack.produce(names.TOPIC_APPROVALS, event.model_dump_json().encode(), plan_id)  # delivered twice
    [first] = stack.tick_approvals()
    # The daemon dropped that tick's run request (e.g. it died): the next tick asks again, same run_key.
    [again] = stack.tick_approvals()
    assert first.run_key == again.run_key == event.event_id
    stack.launch(again)
    stack.produce(names.TOPIC_APPROVALS, event.model_dump_json().encode(), plan_id)
    other = stack.decide(plan_id, "reject", "key:latecomer", "too late")
    assert stack.tick_approvals() == []
    assert _status(stack, plan_id) == ("succeeded", None)

    outcomes = stack.rows("SELECT event_id, outcome FROM approval_events WHERE plan_id = :p", p=plan_id)
    assert sorted((r.event_id, r.outcome) for r in outcomes) == sorted(
        [(event.event_id, "resumes"), (other.event_id, "plan_finished")]
    )
    actions = _actions(stack, plan_id)
    assert actions.count("approval.duplicate") == 2 and actions.count("approval.approved") == 1
    assert actions.count("approval.ignored") == 1 and actions.count("approval.applied") == 1


def test_a_decision_before_the_gate_is_applied_when_the_run_gets_there(make_stack: MakeStack) -> None:
    stack = make_stack()
    event_id = stack.submit()
    plan_id = plan_id_for(event_id)
    [request] = stack.tick_requests()
    stack.decide(plan_id, "approve", "key:early-bird", "pre-approved")
    assert stack.tick_approvals() == []  # no run waits: nothing to resume
    run = stack.launch(request)
    assert _status(stack, plan_id) == ("succeeded", None)
    assert _task_statuses(stack, plan_id, run)["publish"] == ("succeeded", False)
    assert [r.status for r in stack.results()] == ["succeeded"]
    recorded = next(a for a in _audit(stack, plan_id) if a[0] == "approval.approved")
    assert recorded[1] == "key:early-bird" and recorded[3]["outcome"] == "recorded"
    assert "workflow.waiting_approval" not in _actions(stack, plan_id)


def _seconds_left(stack: Stack, plan_id: str) -> float:
    [row] = stack.rows(
        "SELECT deadline - now() AS left FROM workflow_approvals WHERE plan_id = :p", p=plan_id
    )
    return float(row.left.total_seconds())


def _wait_past_deadline(stack: Stack, plan_id: str) -> None:
    time.sleep(max(0.0, _seconds_left(stack, plan_id)) + 0.2)


def test_timeout_rejects(make_stack: MakeStack, tmp_path: Path) -> None:
    stack = make_stack(variant(tmp_path, "publish_timeout_reject", timeout_s=3, on_timeout="reject"))
    plan_id, _ = _pause(stack)
    if _seconds_left(stack, plan_id) > 1.5:  # a loaded machine may already be past it
        assert stack.tick_approvals() == []  # before the deadline nothing happens
    _wait_past_deadline(stack, plan_id)
    [resume] = stack.tick_approvals()
    assert resume.run_key == f"approval-timeout:{plan_id}:publish"
    stack.launch(resume)
    status, error = _status(stack, plan_id)
    assert status == "rejected"
    assert (
        error
        == "publish: rejected by agentflow.approvals.timeout: no decision within the approval timeout of 3 s"
    )
    timed_out = next(a for a in _audit(stack, plan_id) if a[0] == "approval.timed_out")
    assert timed_out[1] == "agentflow.approvals.timeout" and timed_out[3]["timeout_s"] == 3
    assert stack.tick_approvals() == []


def test_timeout_escalates_once_then_rejects(make_stack: MakeStack, tmp_path: Path) -> None:
    spec = variant(
        tmp_path, "publish_timeout_escalate", timeout_s=2, on_timeout="escalate", escalate_to="leads"
    )
    stack = make_stack(spec)
    first, second = stack.submit(), stack.submit()
    for request in stack.tick_requests():
        stack.launch(request)
    approved, ignored = plan_id_for(first), plan_id_for(second)
    _wait_past_deadline(stack, approved)
    _wait_past_deadline(stack, ignored)
    assert stack.tick_approvals() == []  # escalated: still waiting, with a new deadline
    for plan_id in (approved, ignored):
        assert _status(stack, plan_id) == ("waiting_approval", None)
        escalated = next(a for a in _audit(stack, plan_id) if a[0] == "approval.escalated")
        assert escalated[3]["escalate_to"] == "leads"
        assert datetime.fromisoformat(escalated[3]["new_deadline"]) > datetime.fromisoformat(
            escalated[3]["deadline"]
        )

    event = stack.decide(approved, "approve", "key:lead1", "escalation handled")
    # By this tick the other plan's second deadline may have passed too: key the requests by run_key.
    pending = {r.run_key: r for r in stack.tick_approvals()}
    stack.launch(pending.pop(event.event_id))
    assert _status(stack, approved) == ("succeeded", None)

    _wait_past_deadline(stack, ignored)
    pending.update({r.run_key: r for r in stack.tick_approvals()})
    [reject] = pending.values()
    assert reject.run_key == f"approval-timeout:{ignored}:publish"
    stack.launch(reject)
    status, error = _status(stack, ignored)
    assert status == "rejected" and error is not None
    assert error.endswith("nor in as long again after escalation to leads")
    assert _actions(stack, ignored).count("approval.escalated") == 1


def test_bad_approval_events_go_to_the_dlq(make_stack: MakeStack) -> None:
    stack = make_stack()
    dlq = end_cursor(stack.kafka, DLQ_TOPIC)
    event_id = stack.submit()
    plan_id = plan_id_for(event_id)
    stack.tick_requests()  # the plan is queued (not run)
    # JSON with a plan_id, but not a decision (other readers of the topic parse every record).
    bad = {"event_id": "bad-schema", "plan_id": plan_id, "decision": "maybe"}
    stack.produce(names.TOPIC_APPROVALS, json.dumps(bad).encode(), plan_id)
    stack.decide("plan-00000000000000000000", "approve", "key:x", event_id="bad-unknown-plan")
    stack.decide(plan_id, "approve", "key:x", task_id="classify", event_id="bad-no-gate")
    stack.decide(plan_id, "approve", "key:x", tenant="globex", event_id="bad-tenant")
    assert stack.tick_approvals() == []
    letters = [DeadLetter.model_validate_json(r.value) for r in read_all(stack.kafka, DLQ_TOPIC, dlq)]
    reasons = {json.loads(base64.b64decode(x.value_b64))["event_id"]: x.reason for x in letters}
    assert reasons["bad-schema"].startswith("not an ApprovalDecision: task_id: Field required; decision:")
    assert reasons["bad-unknown-plan"].startswith("unknown plan plan-00000000000000000000")
    assert (
        reasons["bad-no-gate"] == "task 'classify' of 'publish_with_approval' is not marked requires_approval"
    )
    assert reasons["bad-tenant"] == f"plan {plan_id} belongs to tenant 'default', not 'globex'"
    assert stack.rows("SELECT 1 FROM workflow_approvals WHERE plan_id = :p", p=plan_id) == []


def _write(tmp_path: Path, mutate: Callable[[dict], None]) -> Path:
    raw = yaml.safe_load(Path(SHIPPED.source_file).read_text())
    mutate(raw)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_approval_settings_are_validated(tmp_path: Path) -> None:
    def settings_without_gate(raw: dict) -> None:
        raw["tasks"][1]["approval"] = {"timeout_s": 60}

    with pytest.raises(SpecError) as err:
        load_spec_file(_write(tmp_path, settings_without_gate))
    assert err.value.task == "draft" and err.value.field == "approval"
    assert "requires_approval: true" in str(err.value)

    def bad_policy(raw: dict) -> None:
        raw["tasks"][2]["approval"]["on_timeout"] = "ignore"

    with pytest.raises(SpecError) as err:
        load_spec_file(_write(tmp_path, bad_policy))
    assert err.value.field == "approval.on_timeout"
    # Specs without approval settings hash (and digest their tasks) as before the settings existed.
    for spec in load_specs().values():
        for task in spec.canonical()["tasks"]:
            assert ("approval" in task) == (task["task_id"] == "publish" and spec.name == SHIPPED.name)
    assert SHIPPED.task("publish").approval_policy.on_timeout == "escalate"
    assert SHIPPED.task("draft").approval_policy.timeout_s == 86400.0
