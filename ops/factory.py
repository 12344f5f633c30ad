"""The one op factory: every agent task of every workflow becomes an op built here."""

# No `from __future__ import annotations`: Dagster inspects the compute functions' annotations at runtime.
import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import dagster as dg
import redis as redis_lib
import sqlalchemy as sa

from agentflow_dagster.agents.roles import AgentRole, get_agent, output_schema
from agentflow_dagster.agents.runner import AgentBudgetError, AgentError, AgentRun, run_agent
from agentflow_dagster.agents.tools import Retriever
from agentflow_dagster.llm.types import OFFLINE_PROVIDER
from agentflow_dagster.observability import llm_records, tracing
from agentflow_dagster.project import current_project
from agentflow_dagster.tools.executor import (
    ApprovalRequest,
    ApprovalState,
    CallScope,
    ToolApprovalPending,
    ToolCallStore,
    ToolExecutor,
    tool_gate_id,
)
from agentflow_dagster.workflows.spec import REF_RE, TaskSpec, WorkflowSpec
from ops import approvals, history
from ops.budget import WorkflowTokenBudget, read_used_if_capped
from ops.idempotency import TaskLock, TaskOutputStore, input_digest, lock_key, wait_for_lock
from ops.retry import is_last_attempt, retry_policy_for

ACTOR = "agentflow.ops"
BASE_RESOURCES = frozenset({"postgres", "redis", "llm", "object_store"})


def resolve_ref(
    value: Any, request_inputs: dict[str, Any], upstream: dict[str, Any], item: Any = None
) -> Any:
    """Resolve `$request.x`, `$tasks.id[.field]` (a list for fanned-out tasks) and `$item`; else literal."""
    if not (isinstance(value, str) and value.startswith("$")):
        return value
    match = REF_RE.match(value)
    if match is None:
        raise ValueError(f"bad reference {value!r}")
    if match["scope"] == "item":
        return item
    if match["scope"] == "request":
        return request_inputs.get(match["name"])
    result = upstream[match["name"]]
    field = match["field"]

    def pick(one: dict[str, Any]) -> Any:
        return one["output"] if field is None else one["output"].get(field)

    return [pick(r) for r in result] if isinstance(result, list) else pick(result)


def retriever_from(resources: Any, keys: Sequence[str]) -> Retriever | None:
    """No keys: none; one key: a Retriever resource; ("embeddings", "vector_store"): the RAG retriever."""
    if not keys:
        return None
    if len(keys) == 1:
        found = getattr(resources, keys[0])
        if not isinstance(found, Retriever):
            raise TypeError(f"resource {keys[0]!r} has no search(query, collection, k) method")
        return found
    from agentflow_dagster.rag.retriever import Retriever as RagRetriever

    embeddings, vector_store = (getattr(resources, k) for k in keys)
    return RagRetriever(embeddings.embedder, vector_store.store)


def request_carrier(spec: WorkflowSpec, deps: Sequence[str]) -> str | None:
    """The dependency whose result carries the workflow request to an op (None: the op takes the
    `request` op's output as an input of its own).

    Every task result carries the request, so an op with a dependency that is not fanned out (a fanned
    one may collect no results at all) needs no `request` input: two Dagster events (input loaded,
    input checked) fewer for each such op of every run (docs/performance.md)."""
    fanned = spec.fanned_tasks()
    return next((d for d in deps if d not in fanned), None)


def carried_request(inputs: dict[str, Any], carrier: str | None) -> dict[str, Any]:
    """The workflow request an op got: in its carrier dependency's result, else as its own input."""
    request: dict[str, Any] = inputs[carrier]["request"] if carrier else inputs["request"]
    return request


def fan_targets(spec: WorkflowSpec, task: TaskSpec) -> list[TaskSpec]:
    """Tasks that fan out over a list field of `task`'s output."""
    return [t for t in spec.tasks if t.fan_out is not None and t.fan_out.source_task == task.task_id]


class _TaskExecution:
    """State of one op attempt: resources, keys and the history rows it writes."""

    def __init__(
        self,
        context: dg.OpExecutionContext,
        spec: WorkflowSpec,
        task: TaskSpec,
        inputs: dict[str, Any],
        carrier: str | None = None,
    ):
        self.context, self.spec, self.task = context, spec, task
        self.request = carried_request(inputs, carrier)
        self.plan_id: str = self.request["plan_id"]
        mapping_key = context.get_mapping_key()
        self.task_key = f"{task.task_id}[{mapping_key}]" if mapping_key else task.task_id
        upstream = {k: v for k, v in inputs.items() if k not in ("request", "item")}
        item = inputs.get("item")
        req_inputs = self.request["inputs"]
        self.inputs = {k: resolve_ref(v, req_inputs, upstream, item) for k, v in task.inputs.items()}
        self.retrieval: tuple[str, str, int] | None = None
        if task.retrieval is not None:
            self.retrieval = (
                str(resolve_ref(task.retrieval.query, req_inputs, upstream, item) or ""),
                str(resolve_ref(task.retrieval.collection, req_inputs, upstream, item) or ""),
                task.retrieval.k,
            )
        self.pg = context.resources.postgres
        self.llm = context.resources.llm
        self.attempt = context.retry_number + 1
        role = get_agent(task.agent)
        self.digest = input_digest(
            {
                "workflow": spec.name,
                "version": spec.version,
                "task": task.model_dump(mode="json"),
                "inputs": self.inputs,
                "retrieval": self.retrieval,
                # Another model gives another answer: a switch of provider is not a cache hit.
                "provider": self.llm.provider_name,
                "model": self.llm.model_for_role(role),
            }
        )
        self.store = TaskOutputStore(self.pg.engine, context.resources.object_store.store)
        # Every llm_calls row this attempt writes (primary and fallback agent), summed as it is written.
        self.llm_totals = llm_records.CallTotals()

    def audit(self, action: str, **detail: Any) -> None:
        self.pg.audit(ACTOR, action, self.plan_id, self.task_key, run_id=self.context.run_id, **detail)

    def audit_row(self, action: str, **detail: Any) -> history.AuditRow:
        """The same entry as `audit`, to be written in the transaction of a history row."""
        return history.AuditRow(
            ACTOR, action, self.plan_id, self.task_key, {"run_id": self.context.run_id, **detail}
        )

    def fail_workflow(self, error: str) -> None:
        history.finish_workflow(self.pg.engine, self.plan_id, "failed", error=f"{self.task_key}: {error}")
        self.audit("workflow.failed", error=error)

    def run_role(
        self,
        role: AgentRole,
        retriever: Retriever | None,
        fallback_used: bool,
        row: int | None = None,
        used: int | None = None,
    ) -> dict[str, Any]:
        """Run one agent once, recorded as one `task_runs` row (`row`: opened already, and `used`: the
        plan's spent tokens read in that transaction); returns the result."""
        engine = self.pg.engine
        if row is None:
            row = history.start_task_run(
                engine, self.plan_id, self.task_key, role.name, self.context.run_id, self.attempt,
                audit=self.audit_row("task.started", agent=role.name, attempt=self.attempt),
            )  # fmt: skip
        # Each attempt: a `chat` span, a redacted llm_calls row (large content by reference), its evaluation.
        recorder = llm_records.ObservedCallRecorder(
            engine, self.plan_id, self.task_key, self.context.run_id,
            store=self.context.resources.object_store.store, trace_id=self.request.get("trace_id"),
            schema=output_schema(role.output),
            question=llm_records.question_of(self.inputs, self.retrieval[0] if self.retrieval else None),
            context=getattr(retriever, "context", llm_records.ContextSource()), totals=self.llm_totals,
        )  # fmt: skip
        try:
            run = run_agent(
                role,
                self.inputs,
                provider=self.llm.provider,
                model=self.llm.model_for_role(role),
                retriever=retriever,
                retrieval_request=self.retrieval,
                recorder=recorder,
                deadline=time.monotonic() + self.task.timeout_s,
                budget=WorkflowTokenBudget(engine, self.plan_id, used=used),
                tools=self.tool_executor(role),
            )
        except ToolApprovalPending as exc:
            status = "rejected" if exc.state == "rejected" else "waiting_approval"
            history.finish_task_run(engine, row, status, error=str(exc))
            raise
        except AgentError as exc:
            u = exc.usage
            history.finish_task_run(
                engine, row, "failed", error=str(exc), input_tokens=u.input_tokens,
                output_tokens=u.output_tokens, cost_usd=u.cost_usd,
                audit=self.audit_row("task.failed", agent=role.name, attempt=self.attempt, error=str(exc)),
            )  # fmt: skip
            raise
        except Exception as exc:
            history.finish_task_run(engine, row, "failed", error=f"{type(exc).__name__}: {exc}")
            raise
        result = self.result_of(run, fallback_used)
        u = run.usage
        # The attempt's row, its audit entry and the stored output: one commit.
        with engine.begin() as conn:
            history.finish_task_run(
                conn, row, "succeeded", input_tokens=u.input_tokens, output_tokens=u.output_tokens,
                cost_usd=u.cost_usd, audit=self.audit_row(
                    "task.succeeded", agent=role.name, attempt=self.attempt, provider=run.provider
                ),
            )  # fmt: skip
            self.store.put(self.plan_id, self.task_key, self.digest, run.agent, run.provider, result, conn)
        return result

    def tool_executor(self, role: AgentRole) -> ToolExecutor | None:
        """The tools `role` may call in this attempt (None when it has none); each call is stored once."""
        registry = current_project().tools
        if registry is None or not registry.allowed(role.tools):
            return None
        scope = CallScope(self.plan_id, self.task_key, self.attempt, self.context.run_id)
        store = ToolCallStore(self.pg.engine, self.context.resources.object_store.store)
        return ToolExecutor(registry, role.tools, scope, store, approver=self.approve_tool)

    def approve_tool(self, request: ApprovalRequest) -> tuple[ApprovalState, str]:
        """A call of an approval-gated tool goes through its own gate of the plan (task's approval policy)."""
        gate_id = tool_gate_id(self.task_key, request.tool, request.digest)
        gate = approvals.enter_gate(
            self.pg.engine, self.plan_id, gate_id, self.task.agent, self.context.run_id,
            self.task.approval_policy, ACTOR,
        )  # fmt: skip
        if gate.status == "approved":
            return "approved", f"approved by {gate.decided_by}"
        if gate.status == "rejected":
            return "rejected", gate.rejection_reason()
        # What the approver decides about: the proposed call, arguments redacted.
        self.audit(
            "tool.approval_requested", gate=gate_id, tool=request.tool, arguments=request.arguments,
            deadline=gate.deadline.isoformat() if gate.deadline else None,
        )  # fmt: skip
        return "waiting", f"approve with: agentflow approve {self.plan_id} '{gate_id}'"

    def run_with_fallback(
        self, retriever: Retriever | None, row: int | None = None, used: int | None = None
    ) -> dict[str, Any]:
        """The primary agent; on its last attempt (or a non-retryable error) the fallback agent instead."""
        try:
            return self.run_role(get_agent(self.task.agent), retriever, False, row, used)
        except AgentError as exc:
            give_up = is_last_attempt(self.context.retry_number, self.task.retry) or not exc.retryable
            if not give_up:
                raise  # Dagster's RetryPolicy schedules the next attempt
            if not self.task.fallback_agent or isinstance(exc, AgentBudgetError):
                self.fail_workflow(str(exc))
                raise dg.Failure(f"{self.task_key}: {exc}", allow_retries=False) from exc
            self.context.log.warning(
                f"{self.task_key}: {exc}; running fallback agent {self.task.fallback_agent!r}"
            )
            self.audit("task.fallback", agent=self.task.fallback_agent, error=str(exc))
        try:
            return self.run_role(get_agent(self.task.fallback_agent), retriever, True)
        except AgentError as exc:
            self.fail_workflow(f"fallback failed too: {exc}")
            raise dg.Failure(f"{self.task_key}: fallback failed too: {exc}", allow_retries=False) from exc

    def result_of(self, run: AgentRun, fallback_used: bool) -> dict[str, Any]:
        return {
            "task_id": self.task.task_id,
            "task_key": self.task_key,
            "agent": run.agent,
            "fallback_used": fallback_used,
            "provider": run.provider,
            "model": run.model,
            "offline": run.provider == OFFLINE_PROVIDER,
            "output": run.output,
            "retrieval_note": run.retrieval.note if run.retrieval else None,
            "usage": {
                "input_tokens": run.usage.input_tokens,
                "output_tokens": run.usage.output_tokens,
                "cost_usd": round(run.usage.cost_usd, 6),
                "latency_ms": round(run.usage.latency_ms, 1),
                "llm_calls": run.usage.calls,
                "llm_attempts": run.usage.attempts,
            },
        }

    def pass_gate(self) -> bool:
        """For a `requires_approval` task: True once approved; else the plan waits or ends rejected here."""
        if not self.task.requires_approval:
            return True
        gate = approvals.enter_gate(
            self.pg.engine, self.plan_id, self.task_key, self.task.agent, self.context.run_id,
            self.task.approval_policy, ACTOR,
        )  # fmt: skip
        if gate.status == "approved":
            self.context.log.info(f"{self.task_key}: approved by {gate.decided_by} at {gate.decided_at}")
            return True
        if gate.status == "rejected":
            self.context.log.warning(f"{self.task_key}: {gate.rejection_reason()}; the workflow ends here")
        else:
            self.context.log.info(
                f"{self.task_key}: waiting for approval until {gate.deadline}; the run stops here and an "
                f"approval of plan {self.plan_id} resumes it in a new run"
            )
        return False

    def record_reuse(self, conn: sa.Connection) -> None:
        history.start_task_run(
            conn, self.plan_id, self.task_key, self.task.agent, self.context.run_id, self.attempt,
            audit=self.audit_row("task.reused", input_digest=self.digest), reused=True,
        )  # fmt: skip

    def execute(self, retriever: Retriever | None) -> tuple[dict[str, Any], bool]:
        """The task's result and whether it was reused from `task_outputs`."""
        lock = self.lock_or_none()
        try:
            # Under the lock (or without Redis): one transaction finds a stored output or opens the attempt.
            with self.pg.engine.begin() as conn:
                cached = self.store.get(self.plan_id, self.task_key, self.digest, conn)
                if cached is not None:
                    self.record_reuse(conn)
                    return cached, True
                row = history.start_task_run(
                    conn, self.plan_id, self.task_key, self.task.agent, self.context.run_id, self.attempt,
                    audit=self.audit_row("task.started", agent=self.task.agent, attempt=self.attempt),
                )  # fmt: skip
                # The token budget's first check reads this (no connection of its own before the first call).
                used = read_used_if_capped(conn, self.plan_id)
            return self.run_with_fallback(retriever, row, used), False
        finally:
            if lock is not None:
                with contextlib.suppress(redis_lib.RedisError):
                    lock.release()  # Redis gone meanwhile: the TTL frees the key

    def lock_or_none(self) -> TaskLock | None:
        """The task's Redis lock; None when Redis is unreachable (the task runs unlocked rather than fail)
        or when another worker holds it and the output is stored already (reused without waiting).

        The lock only stops two live workers paying for the same call; `task_outputs` (first writer
        wins) keeps the result single, so losing the lock while Redis is down costs at most a duplicate call.
        """
        lock = TaskLock(
            self.context.resources.redis.client,
            lock_key(self.plan_id, self.task_key),
            ttl_ms=int((self.task.timeout_s + 60) * 1000),
            owner=self.context.run_id,
        )
        try:
            if lock.acquire():
                return lock
            if self.store.get(self.plan_id, self.task_key, self.digest) is not None:
                return None  # reused by `execute` in its transaction, no lock needed
            acquired = wait_for_lock(lock, self.task.timeout_s + 30, owner_dead=self.run_is_over)
        except redis_lib.RedisError as exc:
            self.context.log.warning(f"{self.task_key}: Redis unavailable ({exc}); running without the lock")
            self.audit("task.lock_unavailable", error=str(exc)[:300])
            return None
        if not acquired:
            raise RuntimeError(
                f"{self.task_key} of {self.plan_id} is running on another worker ({lock.holder()})"
            )
        return lock

    def llm_totals_of_run(self) -> dict[str, Any]:
        """The task's llm_calls totals in this run. A first attempt wrote every such row itself (runs are
        not resumed: `max_resume_run_attempts: 0`), so its own sums are the figures; a retry reads them."""
        if self.context.retry_number == 0:
            return self.llm_totals.as_metadata()
        return llm_records.task_llm_totals(self.pg.engine, self.plan_id, self.task_key, self.context.run_id)

    def run_is_over(self, run_id: str) -> bool:
        """True when `run_id` (a lock owner) is a finished run of this instance: its worker is gone."""
        if run_id == self.context.run_id:
            return False
        run = self.context.instance.get_run_by_id(run_id)
        return run is not None and run.is_finished


def may_wait_for_tool_approval(task: TaskSpec) -> bool:
    """Whether the task's agent (or fallback agent) may call a tool that waits for approval."""
    registry = current_project().tools
    agents = [task.agent, *([task.fallback_agent] if task.fallback_agent else [])]
    return registry is not None and any(registry.needs_approval(get_agent(a).tools) for a in agents)


def make_task_op(spec: WorkflowSpec, task: TaskSpec, retriever_keys: Sequence[str] = ()) -> dg.OpDefinition:
    """The op for one task: named by task_id, inputs from depends_on, RetryPolicy from the spec."""
    targets = fan_targets(spec, task)
    fanned = spec.fanned_tasks()
    carrier = request_carrier(spec, task.depends_on)
    ins: dict[str, dg.In] = {} if carrier else {"request": dg.In(dict)}
    for dep in task.depends_on:
        ins[dep] = dg.In(list if dep in fanned else dict, description=f"result of task {dep}")
    if task.fan_out is not None:
        ins["item"] = dg.In(description=f"one element of {task.fan_out.over}")
    # A gate that is not approved yields nothing: downstream ops are skipped and the run ends cleanly.
    gated = task.requires_approval or may_wait_for_tool_approval(task)
    outs: dict[str, dg.Out] = {
        "result": dg.Out(dict, is_required=not gated, description="task result with provider label and usage")
    }
    for target in targets:
        outs[f"fan_{target.task_id}"] = dg.DynamicOut(
            is_required=not gated, description=f"one {target.task_id} per element"
        )
    # Only tasks that retrieve ask for the retrieval resources (loading an embedder is not free).
    keys = tuple(retriever_keys) if task.retrieval is not None else ()
    resource_keys = set(BASE_RESOURCES) | set(keys)

    def compute(context: dg.OpExecutionContext, inputs: dict[str, Any]) -> Iterator[Any]:
        execution = _TaskExecution(context, spec, task, inputs, carrier)
        if not execution.pass_gate():
            return
        retriever = retriever_from(context.resources, keys)
        tracing.setup_tracing("agentflow-run-worker")
        if retriever is not None:
            retriever = llm_records.TracedRetriever(
                retriever, execution.plan_id, execution.task_key, engine=execution.pg.engine,
                run_id=context.run_id, trace_id=execution.request.get("trace_id"),
            )  # fmt: skip
        # The run's trace context travels in the request (from the run tags via run config), across processes.
        with tracing.agent_span(
            task.agent, execution.plan_id, execution.task_key, parent=execution.request.get("traceparent"),
            gen_ai__workflow__name=spec.name, agentflow__attempt=execution.attempt,
        ):  # fmt: skip
            try:
                result, reused = execution.execute(retriever)
            except ToolApprovalPending as exc:
                context.log.info(f"{execution.task_key}: {exc}; the run stops here")
                return
        usage = result.get("usage", {})
        metadata: dict[str, Any] = {
            "agent": result["agent"],
            "provider": result["provider"],
            "model": result["model"],
            "offline": result["offline"],
            "reused": reused,
            "fallback_used": result["fallback_used"],
            "input_digest": execution.digest,
            # A reused output cost nothing in this run.
            "input_tokens": 0 if reused else usage.get("input_tokens", 0),
            "output_tokens": 0 if reused else usage.get("output_tokens", 0),
            "cost_usd": 0.0 if reused else float(usage.get("cost_usd", 0.0)),
            "latency_ms": 0.0 if reused else float(usage.get("latency_ms", 0.0)),
            # From llm_calls: every attempt of this run (failed ones too) and the mean evaluation scores.
            **execution.llm_totals_of_run(),
        }
        if result["offline"]:
            context.log.info(
                f"{execution.task_key}: answered by the offline-extractive provider (no LLM endpoint)"
            )
        # The request travels on in the result (not in the stored task output): see `request_carrier`.
        yield dg.Output({**result, "request": execution.request}, "result", metadata=metadata)
        for target in targets:
            assert target.fan_out is not None
            items = result["output"].get(target.fan_out.source_field) or []
            for i, element in enumerate(items[: target.fan_out.max_items]):
                yield dg.DynamicOutput(element, mapping_key=str(i), output_name=f"fan_{target.task_id}")

    return dg.OpDefinition(
        compute_fn=compute,
        name=f"{spec.name}__{task.task_id}",  # unique per code location; the job's node is the task_id
        ins=ins,
        outs=outs,
        description=task.description or f"{task.agent} agent task of workflow {spec.name}",
        required_resource_keys=resource_keys,
        tags={
            "agentflow/agent": task.agent,
            "agentflow/fallback_agent": task.fallback_agent or "",
            "agentflow/requires_approval": str(task.requires_approval).lower(),
        },
        retry_policy=retry_policy_for(task.retry),
    )
