"""/v1/workflows: submit to Kafka, read status from the execution history, stream progress, approve."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import sqlalchemy as sa
from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, Response
from opentelemetry.trace import SpanKind
from sse_starlette import EventSourceResponse, ServerSentEvent

from agentflow_dagster import names
from agentflow_dagster.api.auth import AUTH_RESPONSES, Principal, get_ctx, require, too_many
from agentflow_dagster.api.context import ApiContext
from agentflow_dagster.api.errors import invalid
from agentflow_dagster.api.schemas import (
    PLAN_ID_PATTERN,
    TERMINAL,
    ApprovalAccepted,
    ApprovalRequest,
    Attempt,
    Error,
    Submitted,
    SubmitWorkflow,
    TaskState,
    Tokens,
    WorkflowState,
)
from agentflow_dagster.events import ApprovalDecision, WorkflowRequest, plan_id_for
from agentflow_dagster.observability import tracing
from agentflow_dagster.workflows.spec import InputError
from sensors.workflow_requests import inputs_key, trace_id_from

router = APIRouter(prefix="/v1/workflows", tags=["workflows"])

IDEMPOTENCY_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,254}$"
# Threads the event streams of one app may use at once for their reads (each poll takes one briefly).
SSE_POLL_THREADS = 8
PlanId = Path(pattern=PLAN_ID_PATTERN, description="from the 202 answer of POST /v1/workflows")
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Error, "description": "no such plan for this tenant"}
}


@dataclass(frozen=True)
class Claim:
    """An api_requests row: a submission that is published (or being published)."""

    event_id: str
    plan_id: str
    workflow: str
    trace_id: str
    request_hash: str
    published: bool
    stale: bool


def _claim_from(row: sa.Row) -> Claim:
    return Claim(
        row.event_id,
        row.plan_id,
        row.workflow,
        row.trace_id,
        row.request_hash,
        row.published_at is not None,
        bool(row.stale),
    )


def _idem_redis_key(tenant: str, key: str) -> str:
    return f"agentflow:api:idem:{tenant}:{hashlib.sha256(key.encode()).hexdigest()}"


def _find_claim(ctx: ApiContext, tenant: str, key: str) -> Claim | None:
    """Redis first (hot, TTL), then Postgres (durable)."""
    hot = ctx.redis.get(_idem_redis_key(tenant, key))
    if hot is not None:
        return Claim(**json.loads(hot))  # type: ignore[arg-type]
    with ctx.engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT *, created_at < now() - make_interval(secs => :stale) AS stale FROM api_requests "
                "WHERE tenant = :t AND idempotency_key = :k"
            ),
            {"t": tenant, "k": key, "stale": 3 * ctx.config.kafka_timeout_s},
        ).one_or_none()
    return _claim_from(row) if row else None


def _span_in(trace_id: str) -> str:
    """A W3C traceparent for a new span of this hop inside `trace_id`."""
    return f"00-{trace_id}-{secrets.token_hex(8)}-01"


def _replay(claim: Claim, request_hash: str, response: Response) -> Submitted:
    if claim.request_hash != request_hash:
        raise invalid(
            ("header", "Idempotency-Key"), "this Idempotency-Key was used with a different request body"
        )
    response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/workflows/{claim.plan_id}"
    return Submitted(
        event_id=claim.event_id,
        plan_id=claim.plan_id,
        workflow=claim.workflow,
        trace_id=claim.trace_id,
        replayed=True,
    )


@router.post(
    "",
    status_code=202,
    response_model=Submitted,
    responses={**AUTH_RESPONSES, 409: {"model": Error, "description": "same Idempotency-Key in flight"}},
    summary="Submit a workflow request (published to agentflow.workflow.requests)",
)
def submit_workflow(
    body: SubmitWorkflow,
    response: Response,
    principal: Principal = Depends(require("submit")),
    ctx: ApiContext = Depends(get_ctx),
    idempotency_key: str | None = Header(
        default=None, alias="Idempotency-Key", pattern=IDEMPOTENCY_KEY_PATTERN, description="retry-safe key"
    ),
    traceparent: str | None = Header(default=None, max_length=256, description="W3C trace context"),
) -> Submitted:
    """Validate against the spec's declared inputs and publish; 202 with event_id and plan_id."""
    spec = ctx.specs.get(body.workflow)
    if spec is None:
        raise invalid(("body", "workflow"), f"unknown workflow {body.workflow!r}; known: {sorted(ctx.specs)}")
    try:
        inputs = spec.validate_inputs(body.inputs)
    except InputError as exc:
        raise invalid(("body", "inputs"), str(exc)) from None
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    request_hash = hashlib.sha256(canonical.encode()).hexdigest()
    tenant = principal.tenant

    takeover: Claim | None = None
    if idempotency_key is not None:
        prior = _find_claim(ctx, tenant, idempotency_key)
        if prior is not None and prior.published:
            ctx.metrics.submitted.labels(body.workflow, "true").inc()
            return _replay(prior, request_hash, response)
        if prior is not None and not prior.stale:
            raise HTTPException(
                409, "a request with this Idempotency-Key is in flight", headers={"Retry-After": "1"}
            )
        takeover = prior  # its publisher died mid-way: finish the job under the same event_id

    verdict = ctx.budget.check(tenant, ctx.config.token_budget(tenant))
    if not verdict.allowed:
        ctx.metrics.rejected.labels("token_budget").inc()
        raise too_many(
            f"daily token budget of {verdict.limit} spent ({verdict.used} used)", verdict.retry_after_s
        )

    if idempotency_key is not None:
        # Derived from the key, so even a lost idempotency record maps to the same plan (and run_key).
        digest = hashlib.sha256(f"{tenant}\0{idempotency_key}".encode()).hexdigest()[:32]
        event_id = f"idem-{digest}"
    else:
        event_id = f"api-{uuid.uuid4().hex}"
    plan_id = plan_id_for(event_id)
    parent = _span_in(takeover.trace_id) if takeover is not None else traceparent
    attributes = {
        "agentflow.plan_id": plan_id,
        "gen_ai.workflow.name": body.workflow,
        "agentflow.tenant": tenant,
    }
    # The gateway's span continues the caller's trace; without a tracer provider it is a no-op.
    with tracing.span(
        "POST /v1/workflows",
        kind=SpanKind.SERVER,
        parent=parent if trace_id_from(parent) else None,
        attributes=attributes,
    ) as current:
        trace_id = tracing.ids_of(current)[0] or trace_id_from(parent) or secrets.token_hex(16)
        if not _insert_claim(
            ctx, event_id, plan_id, tenant, body.workflow, idempotency_key, request_hash, trace_id
        ):
            prior = _find_claim(ctx, tenant, idempotency_key or "")
            if prior is not None and prior.published:
                return _replay(prior, request_hash, response)
            raise HTTPException(
                409, "a request with this Idempotency-Key is in flight", headers={"Retry-After": "1"}
            )
        try:
            header, run_id = _publish_request(ctx, event_id, body, inputs, tenant, plan_id, trace_id)
        except Exception:
            with ctx.engine.begin() as conn:  # let a retry claim the key again
                conn.execute(
                    sa.text("DELETE FROM api_requests WHERE event_id = :e AND published_at IS NULL"),
                    {"e": event_id},
                )
            raise
    claim = Claim(event_id, plan_id, body.workflow, trace_id, request_hash, True, False)
    with ctx.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE api_requests SET published_at = now() WHERE event_id = :e"), {"e": event_id}
        )
    if idempotency_key is not None:
        ctx.redis.set(
            _idem_redis_key(tenant, idempotency_key),
            json.dumps(claim.__dict__),
            ex=ctx.config.idempotency_ttl_s,
        )
    ctx.audit(
        principal.actor,
        "request.submitted",
        plan_id,
        event_id,
        workflow=body.workflow,
        tenant=tenant,
        trace_id=trace_id,
        idempotency_key=idempotency_key is not None,
    )
    ctx.metrics.submitted.labels(body.workflow, "false").inc()
    response.headers["Location"] = f"/v1/workflows/{plan_id}"
    response.headers["traceparent"] = header
    return Submitted(
        event_id=event_id, plan_id=plan_id, workflow=body.workflow, trace_id=trace_id, run_id=run_id
    )


def _insert_claim(
    ctx: ApiContext,
    event_id: str,
    plan_id: str,
    tenant: str,
    workflow: str,
    idempotency_key: str | None,
    request_hash: str,
    trace_id: str,
) -> bool:
    """Record the submission before publishing; False when a concurrent request owns the key."""
    with ctx.engine.begin() as conn:
        taken = conn.execute(
            sa.text(
                "UPDATE api_requests SET created_at = now() WHERE event_id = :e AND published_at IS NULL "
                "AND created_at < now() - make_interval(secs => :stale) RETURNING event_id"
            ),
            {"e": event_id, "stale": 3 * ctx.config.kafka_timeout_s},
        ).first()
        if taken:
            return True
        inserted = conn.execute(
            sa.text(
                "INSERT INTO api_requests (event_id, plan_id, tenant, workflow, idempotency_key, "
                "request_hash, trace_id) VALUES (:e, :p, :t, :w, :k, :h, :tr) "
                "ON CONFLICT DO NOTHING RETURNING event_id"
            ),
            {
                "e": event_id,
                "p": plan_id,
                "t": tenant,
                "w": workflow,
                "k": idempotency_key,
                "h": request_hash,
                "tr": trace_id,
            },
        ).first()
    return inserted is not None


def _publish_request(
    ctx: ApiContext,
    event_id: str,
    body: SubmitWorkflow,
    inputs: dict[str, Any],
    tenant: str,
    plan_id: str,
    trace_id: str,
) -> tuple[str, str | None]:
    """Publish (or launch) the request; returns the traceparent it carries and the run id if launched."""
    blob = json.dumps(inputs, separators=(",", ":")).encode()
    inputs_ref = None
    if len(blob) > ctx.settings.inline_input_limit:
        # Large inputs travel by reference (DESIGN rule 4), under the key the sensor also uses.
        inputs_ref = inputs_key(plan_id)
        ctx.objects.put(names.BUCKET_ARTIFACTS, inputs_ref, blob, "application/json")
        inputs = {}
    req = WorkflowRequest(
        event_id=event_id,
        workflow=body.workflow,
        inputs=inputs,
        tenant=tenant,
        priority=body.priority,
        inputs_ref=inputs_ref,
    )
    if ctx.config.launch == "direct":
        return _launch_request(ctx, req, ctx.specs[body.workflow].version, trace_id)
    with tracing.send_span(
        names.TOPIC_REQUESTS, agentflow__plan_id=plan_id, gen_ai__workflow__name=body.workflow
    ):
        header = tracing.inject_traceparent() or _span_in(trace_id)
        ctx.publish(names.TOPIC_REQUESTS, event_id, req.model_dump_json().encode(), {"traceparent": header})
    return header, None


def _launch_request(ctx: ApiContext, req: WorkflowRequest, version: str, trace_id: str) -> tuple[str, str]:
    """The direct path: one Dagster run per event_id through the webserver's GraphQL API."""
    with tracing.span(f"launch {req.workflow}", attributes={"agentflow.plan_id": req.plan_id}):
        header = tracing.inject_traceparent() or _span_in(trace_id)
        run_id, _ = ctx.launcher.launch(req, version, header)
    return header, run_id


def _plan_row(ctx: ApiContext, plan_id: str, tenant: str) -> dict[str, Any] | None:
    """The plan's workflow_runs row, else its api_requests row (before the sensor saw it), if `tenant`'s."""
    with ctx.engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT * FROM workflow_runs WHERE plan_id = :p AND tenant = :t"),
            {"p": plan_id, "t": tenant},
        ).one_or_none()
        if row is not None:
            return dict(row._mapping)
        sub = conn.execute(
            sa.text(
                "SELECT event_id, plan_id, workflow, trace_id, created_at AS submitted_at FROM api_requests "
                "WHERE plan_id = :p AND tenant = :t AND published_at IS NOT NULL"
            ),
            {"p": plan_id, "t": tenant},
        ).one_or_none()
    return {**dict(sub._mapping), "status": "submitted"} if sub is not None else None


def _owned_plan(ctx: ApiContext, plan_id: str, principal: Principal) -> dict[str, Any]:
    row = _plan_row(ctx, plan_id, principal.tenant)
    if row is None:
        # 404, not 403: another tenant's plan must be indistinguishable from no plan.
        raise HTTPException(404, f"plan {plan_id} not found")
    return row


def _task_states(ctx: ApiContext, plan_id: str) -> list[TaskState]:
    with ctx.engine.connect() as conn:
        attempts = conn.execute(
            sa.text("SELECT * FROM task_runs WHERE plan_id = :p ORDER BY started_at, id"), {"p": plan_id}
        ).all()
        outputs = conn.execute(
            sa.text(
                "SELECT task_id, output, output_ref FROM task_outputs WHERE plan_id = :p ORDER BY created_at"
            ),
            {"p": plan_id},
        ).all()
    latest_output = {o.task_id: o for o in outputs}
    tasks: dict[str, TaskState] = {}
    for a in attempts:
        state = tasks.setdefault(
            a.task_id, TaskState(task_id=a.task_id, agent=a.agent, status=a.status, attempts=[])
        )
        state.status = a.status
        state.attempts.append(
            Attempt(
                attempt=a.attempt,
                run_id=a.run_id,
                status=a.status,
                reused=a.reused,
                error=a.error,
                input_tokens=a.input_tokens,
                output_tokens=a.output_tokens,
                cost_usd=float(a.cost_usd),
                started_at=a.started_at,
                finished_at=a.finished_at,
            )
        )
    for task_id, out in latest_output.items():
        state = tasks.setdefault(
            task_id, TaskState(task_id=task_id, agent="", status="succeeded", attempts=[])
        )
        state.output, state.output_ref = out.output, out.output_ref
    return list(tasks.values())


@router.get(
    "/{plan_id}",
    response_model=WorkflowState,
    responses={**AUTH_RESPONSES, **NOT_FOUND},
    summary="Status, tasks with attempts, outputs (or references), errors, tokens and cost",
)
def get_workflow(
    plan_id: str = PlanId,
    principal: Principal = Depends(require("read")),
    ctx: ApiContext = Depends(get_ctx),
) -> WorkflowState:
    """One plan of the caller's tenant."""
    row = _owned_plan(ctx, plan_id, principal)
    tasks = _task_states(ctx, plan_id)
    attempts = [a for t in tasks for a in t.attempts]
    tokens_in = sum(a.input_tokens for a in attempts)
    tokens_out = sum(a.output_tokens for a in attempts)
    errors = [row["error"]] if row.get("error") else []
    errors += [f"{t.task_id} attempt {a.attempt}: {a.error}" for t in tasks for a in t.attempts if a.error]
    return WorkflowState(
        plan_id=plan_id,
        event_id=row["event_id"],
        workflow=row["workflow"],
        version=row.get("version"),
        status=row["status"],
        trace_id=row.get("trace_id"),
        submitted_at=row.get("submitted_at"),
        started_at=row.get("started_at"),
        finished_at=row.get("finished_at"),
        output=row.get("output"),
        error=row.get("error"),
        errors=errors,
        runs=list(row.get("dagster_run_ids") or []),
        tasks=tasks,
        tokens=Tokens(input=tokens_in, output=tokens_out, total=tokens_in + tokens_out),
        cost_usd=round(sum(a.cost_usd for a in attempts), 6),
    )


def _poll(
    ctx: ApiContext, plan_id: str, tenant: str, seen_tasks: dict[int, tuple[Any, ...]]
) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, Any]]:
    """One look at the plan (blocking reads, run in a worker thread): changed task attempts, plan row."""
    row = _plan_row(ctx, plan_id, tenant) or {"status": "unknown"}
    with ctx.engine.connect() as conn:
        attempts = conn.execute(
            sa.text(
                "SELECT id, task_id, agent, attempt, status, reused, error, input_tokens, output_tokens, "
                "started_at, finished_at FROM task_runs WHERE plan_id = :p ORDER BY id"
            ),
            {"p": plan_id},
        ).all()
    changed = []
    for a in attempts:
        fingerprint = (a.status, a.finished_at, a.error)
        if seen_tasks.get(a.id) != fingerprint:
            seen_tasks[a.id] = fingerprint
            changed.append(("task", {k: v for k, v in a._mapping.items() if k != "id"}))
    return changed, row


async def _progress(
    ctx: ApiContext, request: Request, plan_id: str, tenant: str, max_s: float
) -> AsyncIterator[ServerSentEvent]:
    """status/task events on every change, `end` when the workflow finishes, `timeout` at the bound.

    Async: an open stream holds no thread. Each poll borrows one from a small per-app pool for its reads,
    so streams can never starve the request handlers; a client that goes away cancels this generator
    (sse-starlette watches for the disconnect), and the open-streams gauge goes down with it.
    """
    if getattr(request.app.state, "sse_limiter", None) is None:
        request.app.state.sse_limiter = anyio.CapacityLimiter(SSE_POLL_THREADS)
    limiter = request.app.state.sse_limiter
    deadline = time.monotonic() + max_s
    seen_status: str | None = None
    seen_tasks: dict[int, tuple[Any, ...]] = {}
    seq = 0

    def event(name: str, data: dict[str, Any]) -> ServerSentEvent:
        nonlocal seq
        seq += 1
        return ServerSentEvent(json.dumps(data, default=str, separators=(",", ":")), event=name, id=str(seq))

    ctx.metrics.open_streams.inc()
    try:
        while True:
            changed, row = await anyio.to_thread.run_sync(
                _poll, ctx, plan_id, tenant, seen_tasks, limiter=limiter
            )
            for name, data in changed:
                yield event(name, data)
            status = str(row["status"])
            if status != seen_status:
                seen_status = status
                yield event("status", {"plan_id": plan_id, "status": status, "error": row.get("error")})
            if status in TERMINAL:
                yield event("end", {"plan_id": plan_id, "status": status})
                return
            if time.monotonic() >= deadline:
                yield event("timeout", {"plan_id": plan_id, "status": status, "after_s": max_s})
                return
            await anyio.sleep(min(ctx.config.sse_poll_s, max(0.0, deadline - time.monotonic())))
    finally:
        ctx.metrics.open_streams.dec()


@router.get(
    "/{plan_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "event stream",
        },
        **AUTH_RESPONSES,
        **NOT_FOUND,
    },
    summary="Server-sent events with task progress until the workflow finishes (bounded)",
)
def workflow_events(
    request: Request,
    plan_id: str = PlanId,
    timeout_s: float | None = Query(default=None, gt=0, le=86400, description="stop after this many seconds"),
    principal: Principal = Depends(require("read")),
    ctx: ApiContext = Depends(get_ctx),
) -> EventSourceResponse:
    """Events: `task` (an attempt changed), `status`, then `end` or `timeout`; a comment ping every 15 s."""
    _owned_plan(ctx, plan_id, principal)
    max_s = min(timeout_s or ctx.config.sse_max_s, ctx.config.sse_max_s)
    return EventSourceResponse(
        _progress(ctx, request, plan_id, principal.tenant, max_s),
        ping=15,  # proxies close idle streams
        sep="\n",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post(
    "/{plan_id}/approvals",
    status_code=202,
    response_model=ApprovalAccepted,
    responses={
        **AUTH_RESPONSES,
        **NOT_FOUND,
        409: {"model": Error, "description": "the workflow has finished or the task needs no approval"},
    },
    summary="Approve or reject a waiting task (audit log + agentflow.workflow.approvals)",
)
def approve(
    body: ApprovalRequest,
    plan_id: str = PlanId,
    principal: Principal = Depends(require("approve")),
    ctx: ApiContext = Depends(get_ctx),
) -> ApprovalAccepted:
    """Record the decision in the audit log and publish it; the approvals consumer resumes the run."""
    row = _owned_plan(ctx, plan_id, principal)
    if row["status"] in TERMINAL:
        raise HTTPException(409, f"plan {plan_id} has finished ({row['status']}); nothing to approve")
    spec = ctx.specs.get(row["workflow"])
    if spec is not None:
        if body.task_id not in spec.task_ids:
            raise invalid(("body", "task_id"), f"workflow {spec.name!r} has no task {body.task_id!r}")
        if not spec.task(body.task_id).requires_approval:
            raise HTTPException(409, f"task {body.task_id!r} of {spec.name!r} does not require approval")
    decision = ApprovalDecision(
        event_id=f"approval-{uuid.uuid4().hex}",
        plan_id=plan_id,
        task_id=body.task_id,
        decision=body.decision,
        comment=body.comment,
        tenant=principal.tenant,
        actor=principal.actor,
    )
    # Audited before publishing: a human decision is on record even if Kafka is down (the client retries).
    ctx.audit(
        principal.actor,
        f"approval.{body.decision}",
        plan_id,
        body.task_id,
        comment=body.comment,
        event_id=decision.event_id,
        tenant=principal.tenant,
    )
    trace_id = row.get("trace_id") or secrets.token_hex(16)
    # The decision joins the plan's trace, so the resumed run shows who approved it and when.
    with (
        tracing.span(f"POST approvals {body.decision}", kind=SpanKind.SERVER, parent=_span_in(trace_id)),
        tracing.send_span(names.TOPIC_APPROVALS, agentflow__plan_id=plan_id, agentflow__task_id=body.task_id),
    ):
        header = tracing.inject_traceparent() or _span_in(trace_id)
        ctx.publish(
            names.TOPIC_APPROVALS, plan_id, decision.model_dump_json().encode(), {"traceparent": header}
        )
    ctx.metrics.approvals.labels(body.decision).inc()
    return ApprovalAccepted(
        event_id=decision.event_id, plan_id=plan_id, task_id=body.task_id, decision=body.decision
    )
