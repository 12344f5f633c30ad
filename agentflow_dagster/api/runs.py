"""Operating workflows over HTTP: list, cancel, retry from failure, and the approvals waiting for a decision.

The same operations as `agentflow runs list / cancel / retry / approvals` (agentflow_dagster/operations.py),
scoped to the key's tenant: another tenant's plan answers 404 like a plan that does not exist.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from agentflow_dagster import operations
from agentflow_dagster.api.auth import AUTH_RESPONSES, Principal, get_ctx, require
from agentflow_dagster.api.context import ApiContext, Unavailable
from agentflow_dagster.api.errors import invalid
from agentflow_dagster.api.schemas import Error, WorkflowStatus
from agentflow_dagster.api.workflows import NOT_FOUND, PlanId
from agentflow_dagster.events import NAME_PATTERN

router = APIRouter(tags=["operations"])
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": Error, "description": "the plan is not in a state this action applies to"}
}


class WorkflowSummary(BaseModel):
    """One plan in a listing (GET /v1/workflows/{plan_id} has its tasks and outputs)."""

    plan_id: str
    event_id: str
    workflow: str
    version: str | None = None
    tenant: str
    status: WorkflowStatus | str
    trace_id: str | None = None
    error: str | None = None
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    runs: list[str] = Field(default_factory=list, description="Dagster run ids that started")


class WorkflowList(BaseModel):
    workflows: list[WorkflowSummary]


class ActionRequest(BaseModel):
    """POST .../cancel and .../retry: why (stored in the audit log)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=2000)


class RunRef(BaseModel):
    run_id: str
    status: str = Field(description="the Dagster run status after the call")


class ActionAccepted(BaseModel):
    """202: Dagster accepted the termination or re-execution; follow it with GET /v1/workflows/{plan_id}."""

    plan_id: str
    action: str
    runs: list[RunRef]
    messages: list[str] = Field(default_factory=list)


class WaitingApproval(BaseModel):
    """A gate waiting for a decision, with its deadline and what happens when it passes."""

    plan_id: str
    task_id: str
    workflow: str
    tenant: str
    requested_at: datetime | None = None
    deadline: datetime | None = None
    on_timeout: str | None = None
    escalate_to: str | None = None
    escalated_at: datetime | None = None
    waiting_run_id: str | None = None


class ApprovalList(BaseModel):
    approvals: list[WaitingApproval]


def _http(exc: operations.OperationError) -> Exception:
    if exc.kind == "not_found":
        return HTTPException(404, str(exc))
    if exc.kind == "conflict":
        return HTTPException(409, str(exc))
    return Unavailable(str(exc))


@router.get(
    "/v1/workflows",
    response_model=WorkflowList,
    responses=AUTH_RESPONSES,
    summary="List the tenant's workflows, newest first (filters: status, workflow, time range)",
)
def list_workflows(
    status: list[WorkflowStatus] = Query(default=[], description="repeat for several statuses"),
    workflow: str | None = Query(default=None, pattern=NAME_PATTERN),
    since: datetime | None = Query(default=None, description="submitted at or after (ISO 8601)"),
    until: datetime | None = Query(default=None, description="submitted before (ISO 8601)"),
    limit: int = Query(default=50, ge=1, le=operations.MAX_LIST),
    principal: Principal = Depends(require("read")),
    ctx: ApiContext = Depends(get_ctx),
) -> WorkflowList:
    """Plans of the key's tenant from the execution history."""
    try:
        rows = operations.list_workflows(
            ctx.engine,
            tenant=principal.tenant,
            statuses=status,
            workflow=workflow,
            since=since,
            until=until,
            limit=limit,
        )
    except ValueError as exc:
        raise invalid(("query", "since" if "since=" in str(exc) else "until"), str(exc)) from None
    return WorkflowList(workflows=[WorkflowSummary(**r, runs=list(r["dagster_run_ids"] or [])) for r in rows])


def _act(
    action: str, plan_id: str, body: ActionRequest | None, principal: Principal, ctx: ApiContext
) -> ActionAccepted:
    do = operations.cancel_plan if action == "cancel" else operations.retry_plan
    try:
        outcome = do(
            ctx.engine,
            operations.DagsterRuns(ctx.config.dagster_graphql_url, ctx.config.kafka_timeout_s * 3),
            plan_id,
            actor=principal.actor,
            audit=ctx.audit,
            tenant=principal.tenant,
            reason=body.reason if body else "",
        )
    except operations.OperationError as exc:
        raise _http(exc) from exc
    return ActionAccepted.model_validate(outcome.as_dict())


@router.post(
    "/v1/workflows/{plan_id}/cancel",
    status_code=202,
    response_model=ActionAccepted,
    responses={**AUTH_RESPONSES, **NOT_FOUND, **CONFLICT},
    summary="Cancel a queued or running workflow through Dagster's run termination",
)
def cancel_workflow(
    body: ActionRequest | None = None,
    plan_id: str = PlanId,
    principal: Principal = Depends(require("submit")),
    ctx: ApiContext = Depends(get_ctx),
) -> ActionAccepted:
    """The plan then shows `canceled` and its result event carries status `canceled`."""
    return _act("cancel", plan_id, body, principal, ctx)


@router.post(
    "/v1/workflows/{plan_id}/retry",
    status_code=202,
    response_model=ActionAccepted,
    responses={**AUTH_RESPONSES, **NOT_FOUND, **CONFLICT},
    summary="Retry a failed (or canceled) workflow from failure: succeeded tasks are not run again",
)
def retry_workflow(
    body: ActionRequest | None = None,
    plan_id: str = PlanId,
    principal: Principal = Depends(require("submit")),
    ctx: ApiContext = Depends(get_ctx),
) -> ActionAccepted:
    """Dagster's re-execution FROM_FAILURE of the plan's latest run."""
    return _act("retry", plan_id, body, principal, ctx)


@router.get(
    "/v1/approvals",
    response_model=ApprovalList,
    responses=AUTH_RESPONSES,
    summary="Approval gates of the tenant waiting for a decision, nearest deadline first",
)
def list_approvals(
    principal: Principal = Depends(require("read")),
    ctx: ApiContext = Depends(get_ctx),
) -> ApprovalList:
    """Decide with POST /v1/workflows/{plan_id}/approvals."""
    rows = operations.list_approvals(ctx.engine, tenant=principal.tenant)
    return ApprovalList(approvals=[WaitingApproval(**r) for r in rows])
