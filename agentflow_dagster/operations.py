"""Operating workflows: list them, cancel or retry one, list the approvals waiting for a decision.

One implementation for `agentflow runs/cancel/retry/approvals` and the API's `/v1/workflows` and
`/v1/approvals`: reads come from the execution history in Postgres; cancel and retry go through the
Dagster webserver's GraphQL API (`terminateRun`, `launchRunReexecution` with strategy FROM_FAILURE), so
Dagster's own run termination and re-execution do the work and the UI shows the same runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import sqlalchemy as sa

from agentflow_dagster import names
from agentflow_dagster.events import FINISHED_STATUSES

# Dagster run statuses that can still be terminated (a queued run is removed from the queue).
ACTIVE_RUN_STATUSES = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")
# A plan can be retried from failure when its latest Dagster run ended in one of these.
RETRYABLE_RUN_STATUSES = ("FAILURE", "CANCELED")
MAX_LIST = 1000

_RUNS_OF_PLAN = """
query RunsOfPlan($tags: [ExecutionTag!]) {
  runsOrError(filter: {tags: $tags}, limit: 50) {
    __typename
    ... on Runs { results { runId status creationTime } }
    ... on PythonError { message }
  }
}
"""
_TERMINATE = """
mutation Terminate($runId: String!) {
  terminateRun(runId: $runId) {
    __typename
    ... on TerminateRunSuccess { run { runId status } }
    ... on TerminateRunFailure { message run { runId status } }
    ... on RunNotFoundError { message }
    ... on UnauthorizedError { message }
    ... on PythonError { message }
  }
}
"""
_REEXECUTE = """
mutation Retry($parentRunId: String!) {
  launchRunReexecution(reexecutionParams: {parentRunId: $parentRunId, strategy: FROM_FAILURE}) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message }
    ... on Error { message }
  }
}
"""


class OperationError(RuntimeError):
    """An operation refused or failed; `kind` is not_found, conflict or unavailable (HTTP 404/409/503)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class DagsterRunRef:
    run_id: str
    status: str
    created: float = 0.0


@dataclass
class Outcome:
    """What cancel or retry did: the Dagster runs it acted on and their status after the call."""

    plan_id: str
    action: str
    runs: list[DagsterRunRef] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "plan_id": self.plan_id,
            "action": self.action,
            "runs": [{"run_id": r.run_id, "status": r.status} for r in self.runs],
            "messages": self.messages,
        }


class DagsterRuns:
    """The few GraphQL calls operations need, against one Dagster webserver."""

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        self.url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self.timeout_s = timeout_s

    def _call(self, query: str, variables: dict[str, Any], field_name: str) -> dict[str, Any]:
        try:
            resp = httpx.post(
                f"{self.url}/graphql",
                json={"query": query, "variables": variables},
                timeout=self.timeout_s,
            )
            resp.raise_for_status()
            body = resp.json()
            data: dict[str, Any] = body["data"][field_name]
        except (httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
            raise OperationError(
                "unavailable",
                f"Dagster GraphQL at {self.url} failed ({type(exc).__name__}: {exc}); "
                "is the webserver up? see `agentflow status`",
            ) from exc
        return data

    def runs_of_plan(self, plan_id: str) -> list[DagsterRunRef]:
        """Every Dagster run tagged with the plan, newest first."""
        data = self._call(
            _RUNS_OF_PLAN, {"tags": [{"key": names.TAG_PLAN_ID, "value": plan_id}]}, "runsOrError"
        )
        if data.get("__typename") != "Runs":
            raise OperationError("unavailable", f"Dagster GraphQL at {self.url}: {data.get('message', data)}")
        refs = [DagsterRunRef(r["runId"], r["status"], r.get("creationTime") or 0.0) for r in data["results"]]
        return sorted(refs, key=lambda r: r.created, reverse=True)

    def terminate(self, run_id: str) -> tuple[DagsterRunRef, str]:
        """Dagster's run termination (a queued run is canceled from the queue); (run, message)."""
        data = self._call(_TERMINATE, {"runId": run_id}, "terminateRun")
        run = data.get("run") or {}
        ref = DagsterRunRef(run.get("runId", run_id), run.get("status", "UNKNOWN"))
        if data.get("__typename") == "TerminateRunSuccess":
            return ref, ""
        return ref, str(data.get("message") or data.get("__typename"))

    def reexecute_from_failure(self, run_id: str) -> DagsterRunRef:
        """A new run re-executing `run_id`'s failed steps and what depends on them (tags are copied)."""
        data = self._call(_REEXECUTE, {"parentRunId": run_id}, "launchRunReexecution")
        if data.get("__typename") != "LaunchRunSuccess":
            raise OperationError(
                "conflict", f"Dagster refused to re-execute run {run_id}: {data.get('message', data)}"
            )
        return DagsterRunRef(data["run"]["runId"], data["run"]["status"])


def utc(value: datetime, name: str) -> datetime:
    """`value` in UTC (naive means UTC); Postgres takes offsets up to 15:59 only."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{name}={value.isoformat()} is out of range once converted to UTC") from None


def list_workflows(
    engine: sa.Engine,
    *,
    tenant: str | None = None,
    statuses: Sequence[str] = (),
    workflow: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Plans from the execution history, newest first, filtered as given."""
    where: list[str] = ["TRUE"]
    params: dict[str, Any] = {"limit": max(1, min(limit, MAX_LIST))}
    if tenant is not None:
        where.append("tenant = :tenant")
        params["tenant"] = tenant
    if statuses:
        where.append("status = ANY(:statuses)")
        params["statuses"] = list(statuses)
    if workflow is not None:
        where.append("workflow = :workflow")
        params["workflow"] = workflow
    for name, value, op in (("since", since, ">="), ("until", until, "<")):
        if value is not None:
            where.append(f"submitted_at {op} :{name}")
            params[name] = utc(value, name)
    sql = (
        "SELECT plan_id, event_id, workflow, version, tenant, status, trace_id, error, submitted_at, "
        "started_at, finished_at, dagster_run_ids FROM workflow_runs "
        f"WHERE {' AND '.join(where)} ORDER BY submitted_at DESC NULLS LAST, plan_id LIMIT :limit"
    )
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(sql), params)]


def list_approvals(engine: sa.Engine, *, tenant: str | None = None) -> list[dict[str, Any]]:
    """Approval gates waiting for a decision, the nearest deadline first."""
    sql = (
        "SELECT a.plan_id, a.task_id, r.workflow, r.tenant, a.requested_at, a.deadline, a.on_timeout, "
        "a.escalate_to, a.escalated_at, a.waiting_run_id FROM workflow_approvals a "
        "JOIN workflow_runs r ON r.plan_id = a.plan_id WHERE a.status = 'waiting'"
        + (" AND r.tenant = :tenant" if tenant is not None else "")
        + " ORDER BY a.deadline NULLS LAST, a.requested_at, a.plan_id, a.task_id"
    )
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(sql), {"tenant": tenant})]


Audit = Callable[..., None]


def _plan(conn: sa.Connection, plan_id: str, tenant: str | None, lock: bool = False) -> dict[str, Any]:
    row = conn.execute(
        sa.text(
            "SELECT plan_id, workflow, tenant, status FROM workflow_runs WHERE plan_id = :p"
            + (" AND tenant = :t" if tenant is not None else "")
            + (" FOR UPDATE" if lock else "")
        ),
        {"p": plan_id, "t": tenant},
    ).one_or_none()
    if row is None:
        # Another tenant's plan answers exactly like a plan that does not exist.
        raise OperationError("not_found", f"plan {plan_id} not found (no workflow_runs row for it)")
    return dict(row._mapping)


def cancel_plan(
    engine: sa.Engine,
    dagster: DagsterRuns,
    plan_id: str,
    *,
    actor: str,
    audit: Audit,
    tenant: str | None = None,
    reason: str = "",
) -> Outcome:
    """Terminate every queued or running Dagster run of the plan; the run-status sensor then records the
    plan as `canceled` and publishes its result event."""
    with engine.connect() as conn:
        plan = _plan(conn, plan_id, tenant)
    if plan["status"] in FINISHED_STATUSES:
        raise OperationError("conflict", f"plan {plan_id} has finished ({plan['status']}); nothing to cancel")
    active = [r for r in dagster.runs_of_plan(plan_id) if r.status in ACTIVE_RUN_STATUSES]
    if not active:
        hint = (
            "it waits for an approval: reject it with `agentflow approve PLAN_ID TASK_ID --reject`"
            if plan["status"] == "waiting_approval"
            else "its run is not created yet; try again in a few seconds"
        )
        raise OperationError("conflict", f"plan {plan_id} has no queued or running Dagster run ({hint})")
    outcome = Outcome(plan_id, "cancel")
    for run in active:
        ref, message = dagster.terminate(run.run_id)
        outcome.runs.append(ref)
        if message:
            outcome.messages.append(f"{run.run_id}: {message}")
    audit(
        actor,
        "workflow.cancel",
        plan_id,
        ",".join(r.run_id for r in outcome.runs),
        tenant=plan["tenant"],
        reason=reason,
        runs=outcome.as_dict()["runs"],
        messages=outcome.messages,
    )
    return outcome


def retry_plan(
    engine: sa.Engine,
    dagster: DagsterRuns,
    plan_id: str,
    *,
    actor: str,
    audit: Audit,
    tenant: str | None = None,
    reason: str = "",
) -> Outcome:
    """Re-execute the plan's latest failed (or canceled) run from failure: the steps that succeeded are
    not run again, and the idempotency store would reuse their outputs anyway."""
    # The row lock serialises concurrent retries of one plan: the second sees `queued` and refuses.
    with engine.begin() as conn:
        plan = _plan(conn, plan_id, tenant, lock=True)
        if plan["status"] not in ("failed", "canceled"):
            raise OperationError(
                "conflict", f"plan {plan_id} is {plan['status']}; only failed or canceled plans are retried"
            )
        runs = dagster.runs_of_plan(plan_id)
        if not runs:
            raise OperationError("conflict", f"plan {plan_id} has no Dagster run to re-execute")
        parent = runs[0]
        if parent.status not in RETRYABLE_RUN_STATUSES:
            raise OperationError(
                "conflict",
                f"the latest run {parent.run_id} of plan {plan_id} is {parent.status}; "
                f"only {' or '.join(RETRYABLE_RUN_STATUSES)} runs are re-executed",
            )
        child = dagster.reexecute_from_failure(parent.run_id)
        # The plan is in flight again; the new run's status events move it on from here.
        conn.execute(
            sa.text(
                "UPDATE workflow_runs SET status = 'queued', finished_at = NULL, error = NULL, "
                "updated_at = now() WHERE plan_id = :p"
            ),
            {"p": plan_id},
        )
    audit(
        actor,
        "workflow.retry",
        plan_id,
        child.run_id,
        tenant=plan["tenant"],
        reason=reason,
        parent_run_id=parent.run_id,
        strategy="FROM_FAILURE",
    )
    return Outcome(plan_id, "retry", runs=[child], messages=[f"re-executes {parent.run_id} from failure"])
