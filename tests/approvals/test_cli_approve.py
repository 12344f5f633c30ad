"""`agentflow approve`: an operator's decision from the command line resumes (or ends) a waiting plan."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import dagster as dg
import pytest
from click.testing import CliRunner, Result

from agentflow_dagster.cli import main
from agentflow_dagster.events import plan_id_for
from agentflow_dagster.settings import get_settings
from tests.approvals.conftest import Stack

MakeStack = Callable[..., Stack]


@pytest.fixture()
def cli(
    make_stack: MakeStack, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Stack, Callable[..., Result]]]:
    stack = make_stack()
    monkeypatch.setenv("AGENTFLOW_POSTGRES_URL", stack.postgres.url)
    monkeypatch.setenv("AGENTFLOW_KAFKA_BOOTSTRAP_SERVERS", stack.kafka.bootstrap_servers)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    get_settings.cache_clear()

    def run(*args: str) -> Result:
        return CliRunner().invoke(main, ["approve", *args], catch_exceptions=False)

    yield stack, run
    get_settings.cache_clear()


def _pause(stack: Stack) -> str:
    event_id = stack.submit()
    [request] = stack.tick_requests()
    assert stack.launch(request).status == dg.DagsterRunStatus.SUCCESS
    return plan_id_for(event_id)


def test_cli_approval_resumes_the_plan_and_is_audited(cli: tuple[Stack, Callable[..., Result]]) -> None:
    stack, run = cli
    plan_id = _pause(stack)

    wrong_task = run(plan_id, "draft")
    assert wrong_task.exit_code == 2 and "does not require approval" in wrong_task.output
    unknown = run("plan-does-not-exist", "publish")
    assert unknown.exit_code == 1 and "unknown plan" in unknown.output
    assert stack.tick_approvals() == []  # the refused commands published nothing

    done = run(plan_id, "publish", "--comment", "checked by the on-call lead", "--actor", "cli:lead")
    assert done.exit_code == 0, done.output
    assert f"plan_id={plan_id} task_id=publish decision=approve" in done.output
    [resume] = stack.tick_approvals()
    assert stack.launch(resume).status == dg.DagsterRunStatus.SUCCESS
    [row] = stack.rows("SELECT status FROM workflow_runs WHERE plan_id = :p", p=plan_id)
    assert row.status == "succeeded"

    audit = stack.rows(
        "SELECT action, actor, detail FROM audit_log WHERE plan_id = :p AND action LIKE 'approval.%' "
        "ORDER BY id",
        p=plan_id,
    )
    assert [(a.action, a.actor) for a in audit] == [
        ("approval.approve", "cli:lead"),
        ("approval.approved", "cli:lead"),
        ("approval.applied", "agentflow.ops"),
    ]
    assert audit[0].detail["comment"] == "checked by the on-call lead" and audit[0].detail["path"] == "cli"

    finished = run(plan_id, "publish")
    assert finished.exit_code == 1 and "has finished (succeeded)" in finished.output


def test_cli_rejection_ends_the_plan(cli: tuple[Stack, Callable[..., Result]]) -> None:
    stack, run = cli
    plan_id = _pause(stack)
    done = run(plan_id, "publish", "--reject", "--comment", "wrong refund amount", "--actor", "cli:lead")
    assert done.exit_code == 0, done.output
    [resume] = stack.tick_approvals()
    stack.launch(resume)
    [row] = stack.rows("SELECT status, error FROM workflow_runs WHERE plan_id = :p", p=plan_id)
    assert (row.status, row.error) == ("rejected", "publish: rejected by cli:lead: wrong refund amount")
