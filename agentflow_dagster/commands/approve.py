"""`agentflow approve PLAN_ID TASK_ID`: an operator's decision about a waiting task, as an approvals event.

The same event the API publishes (`POST /v1/workflows/{plan_id}/approvals`): audited first, then sent to
`agentflow.workflow.approvals`, where the approval sensor records it once and resumes (or ends) the plan.
"""

from __future__ import annotations

import getpass
import secrets
import uuid
from typing import Any

import click
import sqlalchemy as sa

from agentflow_dagster import names
from agentflow_dagster.events import FINISHED_STATUSES, ApprovalDecision
from agentflow_dagster.observability import tracing
from agentflow_dagster.resources_env import build_resources
from agentflow_dagster.settings import get_settings


def _plan(engine: sa.Engine, plan_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = (
            conn.execute(
                sa.text("SELECT workflow, tenant, status, trace_id FROM workflow_runs WHERE plan_id = :p"),
                {"p": plan_id},
            )
            .mappings()
            .first()
        )
    if row is None:
        raise click.ClickException(f"unknown plan {plan_id!r} (no workflow_runs row)")
    return dict(row)


def _check_task(workflow: str, task_id: str) -> None:
    from agentflow_dagster.tools.executor import task_of_gate
    from agentflow_dagster.workflows.loader import load_specs

    spec = load_specs().get(workflow)
    if spec is None:
        return  # a spec no longer shipped: the sensor decides, and dead-letters what it cannot apply
    tool_task = task_of_gate(task_id)  # `<task>/tool:<name>:<digest>`: the gate of a proposed tool call
    if (tool_task or task_id) not in spec.task_ids:
        raise click.BadParameter(f"workflow {workflow!r} has no task {task_id!r}", param_hint="TASK_ID")
    if tool_task is None and not spec.task(task_id).requires_approval:
        raise click.BadParameter(
            f"task {task_id!r} of {workflow!r} does not require approval", param_hint="TASK_ID"
        )


@click.command()
@click.argument("plan_id")
@click.argument("task_id")
@click.option("--reject", is_flag=True, help="reject instead of approve (the workflow ends `rejected`)")
@click.option("--comment", default="", help="why; stored in the audit log and shown in the result")
@click.option("--actor", default=None, help="who decides (default: cli:<login name>)")
def approve(plan_id: str, task_id: str, reject: bool, comment: str, actor: str | None) -> None:
    """Approve (or --reject) TASK_ID of the waiting workflow PLAN_ID."""
    if len(comment) > 4000:
        raise click.BadParameter("at most 4000 characters", param_hint="--comment")
    resources = build_resources(get_settings())
    postgres = resources["postgres"]
    try:
        plan = _plan(postgres.engine, plan_id)
    except sa.exc.OperationalError as exc:
        raise click.ClickException(f"Postgres unreachable: {exc.orig} (see `agentflow status`)") from exc
    if plan["status"] in FINISHED_STATUSES:
        raise click.ClickException(f"plan {plan_id} has finished ({plan['status']}); nothing to approve")
    _check_task(plan["workflow"], task_id)
    decision = ApprovalDecision(
        event_id=f"approval-{uuid.uuid4().hex}",
        plan_id=plan_id,
        task_id=task_id,
        decision="reject" if reject else "approve",
        comment=comment,
        tenant=plan["tenant"],
        actor=actor or f"cli:{getpass.getuser()}",
    )
    # Audited before publishing, as the API does: the decision is on record even if the send fails.
    postgres.audit(
        decision.actor,
        f"approval.{decision.decision}",
        plan_id,
        task_id,
        comment=comment,
        event_id=decision.event_id,
        tenant=plan["tenant"],
        path="cli",
    )
    tracing.setup_tracing("agentflow-cli")
    # The decision joins the plan's trace, as the API's does: the resumed run shows who decided.
    trace_id = plan["trace_id"] or secrets.token_hex(16)
    with (
        tracing.span(
            f"agentflow approve {decision.decision}", parent=f"00-{trace_id}-{secrets.token_hex(8)}-01"
        ),
        tracing.send_span(names.TOPIC_APPROVALS, agentflow__plan_id=plan_id, agentflow__task_id=task_id),
    ):
        headers = [("traceparent", h.encode())] if (h := tracing.inject_traceparent()) else []
        producer = resources["kafka"].producer()
        try:
            producer.send(
                names.TOPIC_APPROVALS,
                key=plan_id.encode(),
                value=decision.model_dump_json().encode(),
                headers=headers,
            ).get(timeout=15)
        finally:
            producer.close(timeout=5)
    tracing.flush()
    click.echo(
        f"event_id={decision.event_id} plan_id={plan_id} task_id={task_id} decision={decision.decision}"
    )
