"""Event models carried on Kafka, and the deterministic ids derived from them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_PLAN_NS = uuid.UUID("6f1c5a52-8d0e-4c2b-9a7e-2f3c4b5d6e7f")

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$"
NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
# Workflow statuses after which nothing more happens to a plan.
FINISHED_STATUSES = ("succeeded", "failed", "canceled", "rejected")


def plan_id_for(event_id: str) -> str:
    """plan_id is a pure function of event_id, so a replayed event maps to the same plan."""
    return "plan-" + uuid.uuid5(_PLAN_NS, event_id).hex[:20]


class WorkflowRequest(BaseModel):
    """An `agentflow.workflow.requests` event."""

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(pattern=ID_PATTERN)
    workflow: str = Field(pattern=NAME_PATTERN)
    inputs: dict[str, Any] = Field(default_factory=dict)
    tenant: str = Field(default="default", pattern=NAME_PATTERN)
    priority: int = Field(default=0, ge=-10, le=10)
    submitted_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    # Inputs too large for Kafka/run config travel by reference to the object store.
    inputs_ref: str | None = None

    @property
    def plan_id(self) -> str:
        return plan_id_for(self.event_id)


class WorkflowResult(BaseModel):
    """An `agentflow.workflow.results` event per finished run: at-least-once, deduplicate on `run_id`."""

    event_id: str
    plan_id: str
    run_id: str
    workflow: str
    tenant: str
    status: Literal["succeeded", "failed", "canceled", "waiting_approval", "rejected"]
    output: dict[str, Any] | None = None
    output_ref: str | None = None
    error: str | None = None
    finished_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class DocumentEvent(BaseModel):
    """An `agentflow.documents` event."""

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(pattern=ID_PATTERN)
    collection: str = Field(pattern=NAME_PATTERN)
    key: str = Field(min_length=1, max_length=1024)
    action: Literal["add", "update", "delete"] = "add"
    submitted_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class DeadLetter(BaseModel):
    """What a `.dlq` topic holds: the original bytes (base64), the reason and the source position."""

    source_topic: str
    partition: int
    offset: int
    reason: str
    value_b64: str
    headers: dict[str, str] = Field(default_factory=dict)
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class ApprovalDecision(BaseModel):
    """An `agentflow.workflow.approvals` event: one human decision about one waiting task."""

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(pattern=ID_PATTERN)
    plan_id: str
    task_id: str
    decision: Literal["approve", "reject"]
    comment: str = ""
    tenant: str
    actor: str = Field(description="who decided: key:<api key prefix>")
    decided_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
