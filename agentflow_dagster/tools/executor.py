"""Run a model's tool call at most once per (plan_id, task_id, call digest), refusing what is not allowed.

Order of one call: parse -> known and allowed -> arguments valid -> stored result reused -> approval
-> run -> result stored -> the model sees it. Refusals and errors are recorded and told to the model;
only a stored `ok` row is ever reused. A worker killed between a tool's completion and the commit of
its row would run it again on retry: `external` tools get a key derived from (plan, task, digest) to
pass on, so the outside system can tell the repeat.
"""

from __future__ import annotations

import hashlib
import html
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import sqlalchemy as sa

from agentflow_dagster.names import BUCKET_ARTIFACTS
from agentflow_dagster.observability import tracing
from agentflow_dagster.observability.redaction import SECRET_PATTERNS, Redactor
from agentflow_dagster.tools.decorator import (
    Tool,
    ToolArgumentError,
    ToolExecutionError,
    parse_arguments,
)
from agentflow_dagster.tools.registry import ToolRegistry

ToolStatus = Literal["ok", "error", "refused", "pending_approval"]
ApprovalState = Literal["approved", "rejected", "waiting"]
# Results above this size are stored in the object store; the row keeps the key.
INLINE_RESULT_LIMIT = 64 * 1024
# What the model is sent of one result; the stored result is whole.
MODEL_RESULT_CHARS = 8000
_SECRETS = Redactor(SECRET_PATTERNS, {})


class ObjectStoreLike(Protocol):
    def ensure_bucket(self, bucket: str) -> None: ...
    def put(self, bucket: str, key: str, data: bytes, content_type: str = ...) -> Any: ...
    def get(self, bucket: str, key: str) -> bytes: ...


@dataclass(frozen=True)
class CallScope:
    """Where a call happens: the plan, the task key, the attempt and the Dagster run."""

    plan_id: str
    task_id: str
    attempt: int = 1
    run_id: str | None = None


@dataclass(frozen=True)
class ApprovalRequest:
    """A call that waits for a human: what the approver is shown."""

    scope: CallScope
    tool: str
    arguments: dict[str, Any]
    digest: str


# The factory decides through the workflow's approval gate; None: approval-gated tools are refused.
Approver = Callable[[ApprovalRequest], tuple[ApprovalState, str]]


class ToolApprovalPending(RuntimeError):
    """A call waits for approval (or was rejected): the task stops here; an approval resumes the plan."""

    def __init__(self, request: ApprovalRequest, detail: str, state: ApprovalState = "waiting"):
        what = "was rejected" if state == "rejected" else "waits for approval"
        super().__init__(f"tool {request.tool!r} {what} ({detail})")
        self.request, self.state = request, state


# A tool call's approval gate, in `workflow_approvals.task_id`: `<task key>/tool:<tool>:<digest prefix>`.
TOOL_GATE_MARK = "/tool:"


def tool_gate_id(task_key: str, tool: str, digest: str) -> str:
    """The gate id an approver names to decide about one proposed call."""
    return f"{task_key}{TOOL_GATE_MARK}{tool}:{digest[:12]}"


def task_of_gate(gate_id: str) -> str | None:
    """The task id (fan-out key dropped) of a tool call's gate id; None for a task's own gate."""
    if TOOL_GATE_MARK not in gate_id:
        return None
    return gate_id.split(TOOL_GATE_MARK, 1)[0].split("[", 1)[0]


@dataclass
class ToolOutcome:
    """What became of one call; `content` is the delimited text the model is sent back."""

    call_id: str
    tool: str
    status: ToolStatus
    content: str
    reused: bool = False
    error: str | None = None


def call_digest(tool: str, arguments: dict[str, Any]) -> str:
    """sha256 of the tool name and its canonical arguments."""
    blob = json.dumps({"tool": tool, "arguments": arguments}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def idempotency_key(scope: CallScope, digest: str) -> str:
    """The key an `external` tool passes on: the same for every retry of the same call."""
    return "af-" + hashlib.sha256(f"{scope.plan_id}\n{scope.task_id}\n{digest}".encode()).hexdigest()[:40]


def render_tool_result(call_id: str, tool: str, status: str, body: Any) -> str:
    """A result delimited as untrusted data (escaped, so it cannot close its own tag), capped in length."""
    # Sorted keys: a result read back from jsonb (which reorders keys) reads exactly like the fresh one.
    text = (
        body if isinstance(body, str) else json.dumps(body, ensure_ascii=False, default=str, sort_keys=True)
    )
    if len(text) > MODEL_RESULT_CHARS:
        text = text[:MODEL_RESULT_CHARS] + f" ...[truncated: {len(text)} characters in all]"
    attrs = f'tool="{html.escape(tool)}" call_id="{html.escape(call_id)}" status="{status}"'
    return f"<untrusted_tool_result {attrs}>\n{html.escape(text, quote=False)}\n</untrusted_tool_result>"


def _outcome(call_id: str, tool: str, status: ToolStatus, body: Any, **extra: Any) -> ToolOutcome:
    return ToolOutcome(call_id, tool, status, render_tool_result(call_id, tool, status, body), **extra)


@dataclass
class CallRow:
    """One `tool_calls` row."""

    scope: CallScope
    tool: str
    call_id: str
    digest: str
    arguments: dict[str, Any] | None
    status: ToolStatus
    result: Any = None
    error: str | None = None
    latency_ms: float | None = None
    side_effects: str | None = None


class ToolCallStore:
    """The `tool_calls` table; large results by reference in the artifacts bucket."""

    def __init__(self, engine: sa.Engine, objects: ObjectStoreLike | None = None):
        self.engine, self.objects = engine, objects

    def stored(self, scope: CallScope, digest: str) -> tuple[bool, Any]:
        """(True, result) when this call of this task of this plan completed before."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.text(
                    "SELECT result, result_ref FROM tool_calls WHERE plan_id = :p AND task_id = :t "
                    "AND call_digest = :d AND status = 'ok'"
                ),
                {"p": scope.plan_id, "t": scope.task_id, "d": digest},
            ).first()
        if row is None:
            return False, None
        if row.result_ref and self.objects is not None:
            return True, json.loads(self.objects.get(BUCKET_ARTIFACTS, row.result_ref))
        return True, row.result

    def record(self, row: CallRow) -> tuple[bool, Any]:
        """Insert the row; for `ok` the first writer wins: (False, the winner's result) when it was not us."""
        blob = json.dumps(row.result, ensure_ascii=False, default=str) if row.status == "ok" else None
        ref = None
        if blob is not None and len(blob) > INLINE_RESULT_LIMIT and self.objects is not None:
            task = row.scope.task_id.replace("[", ".").replace("]", "")
            ref = f"tool-results/{row.scope.plan_id}/{task}/{row.digest}.json"
            self.objects.ensure_bucket(BUCKET_ARTIFACTS)
            self.objects.put(BUCKET_ARTIFACTS, ref, blob.encode(), "application/json")
            blob = None
        with self.engine.begin() as conn:
            inserted = conn.execute(
                sa.text(
                    "INSERT INTO tool_calls (plan_id, task_id, attempt, run_id, tool, call_id, call_digest, "
                    "arguments, status, result, result_ref, error, latency_ms, side_effects) VALUES (:p, :t, "
                    ":a, :r, :tool, :cid, :d, CAST(:args AS jsonb), :s, CAST(:res AS jsonb), :ref, :e, :l, "
                    ":se) ON CONFLICT (plan_id, task_id, call_digest) WHERE status = 'ok' DO NOTHING "
                    "RETURNING id"
                ),
                {
                    "p": row.scope.plan_id,
                    "t": row.scope.task_id,
                    "a": row.scope.attempt,
                    "r": row.scope.run_id,
                    "tool": row.tool,
                    "cid": row.call_id,
                    "d": row.digest,
                    "args": None if row.arguments is None else json.dumps(_SECRETS.value(row.arguments)),
                    "s": row.status,
                    "res": blob,
                    "ref": ref,
                    "e": row.error,
                    "l": row.latency_ms,
                    "se": row.side_effects,
                },
            ).first()
        if inserted is not None or row.status != "ok":
            return True, row.result
        return False, self.stored(row.scope, row.digest)[1]


@dataclass
class ToolExecutor:
    """The tools one agent may call in one task attempt, and the store that makes each call single."""

    registry: ToolRegistry
    allow_list: frozenset[str]
    scope: CallScope
    store: ToolCallStore | None = None
    approver: Approver | None = None
    outcomes: list[ToolOutcome] = field(default_factory=list)

    def tools(self) -> list[Tool]:
        """The tools the agent is offered: registered and on its allow-list."""
        return self.registry.allowed(self.allow_list)

    def openai_tools(self) -> list[dict[str, Any]]:
        return [t.openai_tool() for t in self.tools()]

    def execute(
        self, call_id: str, name: str, raw_arguments: str | None, deadline: float | None = None
    ) -> ToolOutcome:
        """Run (or reuse, or refuse) one call; never raises for the model's mistakes or the tool's errors."""
        tool = self.registry.get(name)
        kind = "extension" if tool is not None and tool.source.startswith("mcp:") else "function"
        with tracing.tool_span(
            name, self.scope.plan_id, self.scope.task_id,
            gen_ai__tool__call__id=call_id, gen_ai__tool__type=kind, agentflow__attempt=self.scope.attempt,
        ) as span:  # fmt: skip
            outcome = self._execute(tool, call_id, name, raw_arguments, deadline)
            span.set_attribute("agentflow.tool.status", outcome.status)
            span.set_attribute("agentflow.tool.reused", outcome.reused)
            if outcome.status in ("error", "refused"):
                span.set_attribute("error.type", f"tool_{outcome.status}")
        self.outcomes.append(outcome)
        return outcome

    def refuse(self, call_id: str, name: str, raw_arguments: str | None, reason: str) -> ToolOutcome:
        """Record a call refused before it was looked at (e.g. past `max_tool_rounds`), in its own span."""
        try:
            args: dict[str, Any] | None = parse_arguments(raw_arguments)
        except ToolArgumentError:
            args = None
        with tracing.tool_span(
            name, self.scope.plan_id, self.scope.task_id, gen_ai__tool__call__id=call_id
        ) as span:
            outcome = self._refuse(call_id, name, args, reason)
            span.set_attribute("agentflow.tool.status", "refused")
            span.set_attribute("error.type", "tool_refused")
        self.outcomes.append(outcome)
        return outcome

    def _refuse(self, call_id: str, name: str, args: dict[str, Any] | None, reason: str) -> ToolOutcome:
        digest = call_digest(name, args if args is not None else {"unparsed": True})
        self._record(CallRow(self.scope, name, call_id, digest, args, "refused", error=reason))
        return ToolOutcome(
            call_id, name, "refused", render_tool_result(call_id, name, "refused", reason), error=reason
        )

    def _record(self, row: CallRow) -> tuple[bool, Any]:
        return self.store.record(row) if self.store is not None else (True, row.result)

    def _execute(
        self, tool: Tool | None, call_id: str, name: str, raw: str | None, deadline: float | None
    ) -> ToolOutcome:
        try:
            args = parse_arguments(raw)
        except ToolArgumentError as exc:
            return self._refuse(call_id, name, None, f"refused: {exc}")
        if tool is None:
            return self._refuse(call_id, name, args, f"refused: there is no tool named {name!r}")
        if name not in self.allow_list:
            return self._refuse(call_id, name, args, f"refused: this agent is not allowed to use {name!r}")
        try:
            args = tool.validate(args)
        except ToolArgumentError as exc:
            return self._refuse(call_id, name, args, f"refused: invalid arguments for {name!r}: {exc}")
        digest = call_digest(name, args)
        if self.store is not None:
            found, result = self.store.stored(self.scope, digest)
            if found:
                return _outcome(call_id, name, "ok", result, reused=True)
        if tool.requires_approval:
            refusal = self._approve(tool, call_id, args, digest)
            if refusal is not None:
                return refusal
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return self._refuse(call_id, name, args, "refused: the task's deadline has passed")
        key = idempotency_key(self.scope, digest)  # passed to every tool that asks for it
        started = time.monotonic()
        try:
            result = tool.invoke(args, key, remaining)
        except ToolExecutionError as exc:
            error = str(exc)[:1000]
            self._record(
                CallRow(self.scope, name, call_id, digest, args, "error", error=error,
                        latency_ms=(time.monotonic() - started) * 1000, side_effects=tool.side_effects)
            )  # fmt: skip
            return ToolOutcome(
                call_id, name, "error", render_tool_result(call_id, name, "error", error), error=error
            )
        latency = (time.monotonic() - started) * 1000
        # Stored before the model sees it: a retry of this task reads this row instead of calling again.
        first, result = self._record(
            CallRow(self.scope, name, call_id, digest, args, "ok", result=result, latency_ms=latency,
                    side_effects=tool.side_effects)
        )  # fmt: skip
        return ToolOutcome(
            call_id, name, "ok", render_tool_result(call_id, name, "ok", result), reused=not first
        )

    def _approve(self, tool: Tool, call_id: str, args: dict[str, Any], digest: str) -> ToolOutcome | None:
        """None when approved; a refusal without a gate; ToolApprovalPending when waiting or rejected."""
        if self.approver is None:
            return self._refuse(
                call_id, tool.name, args, f"refused: {tool.name!r} requires approval and this run has no gate"
            )
        request = ApprovalRequest(self.scope, tool.name, _SECRETS.value(args), digest)
        state, detail = self.approver(request)
        if state == "approved":
            return None
        if state == "rejected":
            self._refuse(call_id, tool.name, args, f"refused: the approver rejected this call: {detail}")
            raise ToolApprovalPending(request, detail, "rejected")
        self._record(
            CallRow(self.scope, tool.name, call_id, digest, args, "pending_approval", error=detail,
                    side_effects=tool.side_effects)
        )  # fmt: skip
        raise ToolApprovalPending(request, detail)
