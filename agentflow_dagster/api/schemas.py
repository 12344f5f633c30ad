"""Request and response bodies of the gateway (its approval event is `events.ApprovalDecision`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agentflow_dagster.events import FINISHED_STATUSES, NAME_PATTERN

PLAN_ID_PATTERN = r"^plan-[0-9a-f]{20}$"
TASK_KEY_PATTERN = r"^[a-z][a-z0-9_]{0,127}$"

WorkflowStatus = Literal[
    "submitted", "queued", "running", "waiting_approval", "succeeded", "failed", "canceled", "rejected"
]
TERMINAL = frozenset(FINISHED_STATUSES)


class Error(BaseModel):
    """An error answer: what is wrong and how to fix it."""

    detail: str


class SubmitWorkflow(BaseModel):
    """POST /v1/workflows: the tenant comes from the API key, never from the body."""

    model_config = ConfigDict(extra="forbid")

    workflow: str = Field(pattern=NAME_PATTERN, description="a workflow spec name, e.g. support_triage")
    inputs: dict[str, Any] = Field(default_factory=dict, description="the spec's declared inputs")
    priority: int = Field(default=0, ge=-10, le=10)


class Submitted(BaseModel):
    """202 answer: the request is on Kafka; follow it with GET /v1/workflows/{plan_id}."""

    event_id: str
    plan_id: str
    workflow: str
    trace_id: str
    status: WorkflowStatus = "submitted"
    run_id: str | None = Field(default=None, description="the Dagster run, when launched directly")
    replayed: bool = Field(
        default=False, description="true when an Idempotency-Key matched an earlier request"
    )


class Attempt(BaseModel):
    """One attempt of a task (a `task_runs` row)."""

    attempt: int
    run_id: str
    status: str
    reused: bool
    error: str | None = None
    input_tokens: int
    output_tokens: int
    cost_usd: float
    started_at: datetime
    finished_at: datetime | None = None


class TaskState(BaseModel):
    """A task's latest status, every attempt, and its output (or a reference to it)."""

    task_id: str
    agent: str
    status: str
    attempts: list[Attempt]
    output: Any = None
    output_ref: str | None = None


class Tokens(BaseModel):
    input: int = 0
    output: int = 0
    total: int = 0


class WorkflowState(BaseModel):
    """GET /v1/workflows/{plan_id}."""

    plan_id: str
    event_id: str
    workflow: str
    version: str | None = None
    status: WorkflowStatus | str
    trace_id: str | None = None
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    output: Any = None
    error: str | None = None
    errors: list[str] = Field(default_factory=list, description="the workflow error and failed attempts")
    runs: list[str] = Field(default_factory=list, description="Dagster run ids")
    tasks: list[TaskState] = Field(default_factory=list)
    tokens: Tokens = Field(default_factory=Tokens)
    cost_usd: float = 0.0


class ApprovalRequest(BaseModel):
    """POST /v1/workflows/{plan_id}/approvals."""

    model_config = ConfigDict(extra="forbid")

    task_id: str = Field(pattern=TASK_KEY_PATTERN)
    decision: Literal["approve", "reject"]
    comment: str = Field(default="", max_length=4000)


class ApprovalAccepted(BaseModel):
    """202 answer to an approval: recorded in the audit log and published."""

    event_id: str
    plan_id: str
    task_id: str
    decision: Literal["approve", "reject"]


class DocumentAccepted(BaseModel):
    """202 answer to an upload: stored, and the ingest event is published."""

    event_id: str
    collection: str
    key: str
    bucket: str
    size: int
    version: str


class SearchHit(BaseModel):
    """One retrieved chunk with its provenance."""

    chunk_id: str
    text: str
    score: float
    document: str
    version: str
    start: int
    end: int
    collection: str


class SearchResults(BaseModel):
    query: str
    collection: str
    hits: list[SearchHit]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """Every dependency with ok and a short detail; 503 when any is down."""

    ready: bool
    checks: dict[str, dict[str, Any]]
