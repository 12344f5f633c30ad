"""Approval gates: the state of each `requires_approval` task of a plan, in `workflow_approvals`.

A run that reaches a gate without a decision records the plan as waiting and stops there; a decision
(a human's `agentflow.workflow.approvals` event, or the timeout) closes the gate and names the run
that resumes the plan. Every transition locks the gate's row, so a decision that arrives while a run
is reaching the gate is never lost: one of the two sees the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa

from agentflow_dagster.events import FINISHED_STATUSES
from agentflow_dagster.workflows.spec import ApprovalSpec
from ops.history import AuditRow

GateStatus = Literal["waiting", "approved", "rejected"]
DecisionOutcome = Literal["resumes", "recorded", "duplicate", "already_decided", "plan_finished"]
TIMEOUT_ACTOR = "agentflow.approvals.timeout"
# What the run-status sensor publishes for a run that stopped at a gate, by the gate's state.
RUN_WAITING, RUN_REJECTED = "waiting_approval", "rejected"

_GATE_COLUMNS = (
    "plan_id, task_id, status, requested_at, deadline, timeout_s, on_timeout, escalate_to, escalated_at, "
    "waiting_run_id, decision, decided_by, decided_at, comment, decision_event_id, traceparent, "
    "resume_run_key, launched_at, applied_run_id, applied_at"
)


@dataclass(frozen=True)
class Gate:
    """One gate's row."""

    plan_id: str
    task_id: str
    status: GateStatus
    requested_at: datetime | None
    deadline: datetime | None
    timeout_s: float | None
    on_timeout: str | None
    escalate_to: str | None
    escalated_at: datetime | None
    waiting_run_id: str | None
    decision: str | None
    decided_by: str | None
    decided_at: datetime | None
    comment: str | None
    decision_event_id: str | None
    traceparent: str | None
    resume_run_key: str | None
    launched_at: datetime | None
    applied_run_id: str | None
    applied_at: datetime | None

    @classmethod
    def of(cls, row: sa.Row[Any]) -> Gate:
        return cls(**row._mapping)

    def rejection_reason(self) -> str:
        """`<task>: rejected by <who>[: comment]`, the workflow's error."""
        why = f": {self.comment}" if self.comment else ""
        return f"{self.task_id}: rejected by {self.decided_by}{why}"


def _audit(conn: sa.Connection, actor: str, action: str, plan_id: str, subject: str, **detail: Any) -> None:
    AuditRow(actor, action, plan_id, subject, detail).insert(conn)


def _task_row(
    conn: sa.Connection, plan_id: str, task_id: str, agent: str, run_id: str, status: str, error: str | None
) -> None:
    """A closed `task_runs` row, so the plan's status page shows the gate as waiting or rejected."""
    conn.execute(
        sa.text(
            "INSERT INTO task_runs (plan_id, task_id, agent, run_id, attempt, status, error, finished_at) "
            "VALUES (:p, :t, :a, :r, 1, :s, :e, now())"
        ),
        {"p": plan_id, "t": task_id, "a": agent, "r": run_id, "s": status, "e": error},
    )


def enter_gate(
    engine: sa.Engine, plan_id: str, task_id: str, agent: str, run_id: str, policy: ApprovalSpec, actor: str
) -> Gate:
    """A run reached the gate: apply its decision, or record the plan as waiting for one.

    approved: the task runs (audit `approval.applied`). rejected: the workflow ends `rejected` with the
    reason. No decision yet: the plan is `waiting_approval` until the deadline (kept across re-entries).
    """
    with engine.begin() as conn:
        row = conn.execute(
            sa.text(
                "INSERT INTO workflow_approvals (plan_id, task_id, status, requested_at, deadline, "
                "timeout_s, on_timeout, escalate_to, waiting_run_id) VALUES (:p, :t, 'waiting', now(), "
                "now() + make_interval(secs => :timeout), :timeout, :on_timeout, :escalate_to, :r) "
                "ON CONFLICT (plan_id, task_id) DO UPDATE SET updated_at = now(), "
                "requested_at = COALESCE(workflow_approvals.requested_at, now()), "
                "waiting_run_id = CASE WHEN workflow_approvals.status = 'waiting' THEN :r "
                "ELSE workflow_approvals.waiting_run_id END "
                f"RETURNING {_GATE_COLUMNS}"
            ),
            {
                "p": plan_id,
                "t": task_id,
                "r": run_id,
                "timeout": policy.timeout_s,
                "on_timeout": policy.on_timeout,
                "escalate_to": policy.escalate_to,
            },
        ).one()
        gate = Gate.of(row)
        if gate.status == "waiting":
            conn.execute(
                sa.text(
                    "UPDATE workflow_runs SET status = 'waiting_approval', updated_at = now() "
                    "WHERE plan_id = :p AND status NOT IN :finished"
                ).bindparams(sa.bindparam("finished", expanding=True)),
                {"p": plan_id, "finished": list(FINISHED_STATUSES)},
            )
            _task_row(conn, plan_id, task_id, agent, run_id, "waiting_approval", None)
            _audit(
                conn, actor, "workflow.waiting_approval", plan_id, task_id, run_id=run_id,
                deadline=gate.deadline, on_timeout=gate.on_timeout, escalate_to=gate.escalate_to or None,
            )  # fmt: skip
            return gate
        conn.execute(
            sa.text(
                "UPDATE workflow_approvals SET applied_run_id = :r, applied_at = now(), updated_at = now() "
                "WHERE plan_id = :p AND task_id = :t"
            ),
            {"p": plan_id, "t": task_id, "r": run_id},
        )
        decided = {
            "decided_by": gate.decided_by,
            "decided_at": gate.decided_at,
            "comment": gate.comment,
            "event_id": gate.decision_event_id,
            "run_id": run_id,
        }
        if gate.status == "approved":
            _audit(conn, actor, "approval.applied", plan_id, task_id, decision="approve", **decided)
            return gate
        reason = gate.rejection_reason()
        conn.execute(
            sa.text(
                "UPDATE workflow_runs SET status = 'rejected', error = :e, output = NULL, "
                "finished_at = now(), updated_at = now() WHERE plan_id = :p"
            ),
            {"p": plan_id, "e": reason},
        )
        _task_row(conn, plan_id, task_id, agent, run_id, "rejected", reason)
        _audit(conn, actor, "approval.applied", plan_id, task_id, decision="reject", **decided)
        _audit(conn, actor, "workflow.rejected", plan_id, task_id, error=reason, **decided)
        return gate


@dataclass(frozen=True)
class Decision:
    """One decision event, as the approvals sensor received it."""

    event_id: str
    plan_id: str
    task_id: str
    decision: Literal["approve", "reject"]
    actor: str
    comment: str
    tenant: str
    decided_at: datetime
    traceparent: str | None = None


def record_decision(engine: sa.Engine, d: Decision, sensor: str) -> DecisionOutcome:
    """Record a decision once per event_id; `resumes` when it closed a waiting gate (a run must resume).

    A decision that arrives before any run reached the gate is kept and applied when one does; a gate
    already decided keeps its first decision.
    """
    status = "approved" if d.decision == "approve" else "rejected"
    with engine.begin() as conn:
        fresh = conn.execute(
            sa.text(
                "INSERT INTO approval_events (event_id, plan_id, task_id, decision, actor, comment, tenant, "
                "decided_at, outcome) VALUES (:e, :p, :t, :d, :a, :c, :tenant, :at, 'pending') "
                "ON CONFLICT DO NOTHING"
            ),
            {
                "e": d.event_id,
                "p": d.plan_id,
                "t": d.task_id,
                "d": d.decision,
                "a": d.actor,
                "c": d.comment,
                "tenant": d.tenant,
                "at": d.decided_at,
            },  # fmt: skip
        ).rowcount
        if not fresh:
            _audit(conn, sensor, "approval.duplicate", d.plan_id, d.task_id, event_id=d.event_id)
            return "duplicate"
        # Not locked: gates lock their row first and then the plan's, so locking here could deadlock.
        plan_status = conn.execute(
            sa.text("SELECT status FROM workflow_runs WHERE plan_id = :p"), {"p": d.plan_id}
        ).scalar()
        outcome: DecisionOutcome
        if plan_status in FINISHED_STATUSES:
            outcome = "plan_finished"
        else:
            decision = {
                "p": d.plan_id, "t": d.task_id, "s": status, "d": d.decision, "by": d.actor,
                "at": d.decided_at, "c": d.comment, "e": d.event_id, "tp": d.traceparent,
            }  # fmt: skip
            # No row yet: no run reached the gate; the decision waits for the run that does.
            early = conn.execute(
                sa.text(
                    "INSERT INTO workflow_approvals (plan_id, task_id, status, decision, decided_by, "
                    "decided_at, comment, decision_event_id, traceparent) "
                    "VALUES (:p, :t, :s, :d, :by, :at, :c, :e, :tp) ON CONFLICT DO NOTHING"
                ),
                decision,
            ).rowcount
            if early:
                outcome = "recorded"
            else:
                closed = conn.execute(
                    sa.text(
                        "UPDATE workflow_approvals SET status = :s, decision = :d, decided_by = :by, "
                        "decided_at = :at, comment = :c, decision_event_id = :e, traceparent = :tp, "
                        "resume_run_key = :e, updated_at = now() "
                        "WHERE plan_id = :p AND task_id = :t AND status = 'waiting'"
                    ),
                    decision,
                ).rowcount
                outcome = "resumes" if closed else "already_decided"
        conn.execute(
            sa.text("UPDATE approval_events SET outcome = :o WHERE event_id = :e"),
            {"o": outcome, "e": d.event_id},
        )
        detail: dict[str, Any] = {
            "decision": d.decision,
            "comment": d.comment,
            "decided_at": d.decided_at,
            "event_id": d.event_id,
            "tenant": d.tenant,
            "outcome": outcome,
        }
        if outcome in ("resumes", "recorded"):
            # Who decided what and when: the decider is the actor of this entry.
            _audit(conn, d.actor, f"approval.{status}", d.plan_id, d.task_id, recorded_by=sensor, **detail)
        else:
            _audit(conn, sensor, "approval.ignored", d.plan_id, d.task_id, decided_by=d.actor, **detail)
        return outcome


@dataclass(frozen=True)
class Expiry:
    """What the timeout did to one gate."""

    plan_id: str
    task_id: str
    action: Literal["escalated", "rejected"]


def expire_overdue(engine: sa.Engine, sensor: str, limit: int = 100) -> list[Expiry]:
    """Gates past their deadline: escalate once (`on_timeout: escalate`), else reject with the reason."""
    done: list[Expiry] = []
    with engine.begin() as conn:
        rows = conn.execute(
            sa.text(
                f"SELECT {_GATE_COLUMNS} FROM workflow_approvals WHERE status = 'waiting' "
                "AND deadline <= now() ORDER BY deadline LIMIT :n FOR UPDATE SKIP LOCKED"
            ),
            {"n": limit},
        ).all()
        for gate in map(Gate.of, rows):
            waited = {
                "requested_at": gate.requested_at,
                "deadline": gate.deadline,
                "timeout_s": gate.timeout_s,
            }
            if gate.on_timeout == "escalate" and gate.escalated_at is None:
                new_deadline = conn.execute(
                    sa.text(
                        "UPDATE workflow_approvals SET escalated_at = now(), updated_at = now(), "
                        "deadline = now() + make_interval(secs => timeout_s) "
                        "WHERE plan_id = :p AND task_id = :t RETURNING deadline"
                    ),
                    {"p": gate.plan_id, "t": gate.task_id},
                ).scalar_one()
                _audit(
                    conn, sensor, "approval.escalated", gate.plan_id, gate.task_id,
                    escalate_to=gate.escalate_to or None, new_deadline=new_deadline, **waited,
                )  # fmt: skip
                done.append(Expiry(gate.plan_id, gate.task_id, "escalated"))
                continue
            comment = f"no decision within the approval timeout of {gate.timeout_s:g} s"
            if gate.escalated_at is not None:
                who = gate.escalate_to or "the escalation contact"
                comment += f", nor in as long again after escalation to {who}"
            key = f"approval-timeout:{gate.plan_id}:{gate.task_id}"
            conn.execute(
                sa.text(
                    "UPDATE workflow_approvals SET status = 'rejected', decision = 'reject', "
                    "decided_by = :by, decided_at = now(), comment = :c, decision_event_id = :k, "
                    "resume_run_key = :k, updated_at = now() WHERE plan_id = :p AND task_id = :t"
                ),
                {"by": TIMEOUT_ACTOR, "c": comment, "k": key, "p": gate.plan_id, "t": gate.task_id},
            )
            _audit(
                conn,
                TIMEOUT_ACTOR,
                "approval.timed_out",
                gate.plan_id,
                gate.task_id,
                comment=comment,
                **waited,
            )
            done.append(Expiry(gate.plan_id, gate.task_id, "rejected"))
    return done


@dataclass(frozen=True)
class Resume:
    """A closed gate whose resume run the sensor has not yet seen exist, with what it needs to launch it."""

    run_key: str
    plan_id: str
    task_id: str
    decision: str
    waiting_run_id: str | None
    traceparent: str | None
    event_id: str
    workflow: str
    version: str
    tenant: str
    trace_id: str | None
    inputs: dict[str, Any] | None
    submitted_at: datetime | None


def unlaunched_resumes(engine: sa.Engine, limit: int = 100) -> list[Resume]:
    """Closed gates whose resume run was not seen yet (the sensor launches or confirms each)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT a.resume_run_key AS run_key, a.plan_id, a.task_id, a.decision, a.waiting_run_id, "
                "a.traceparent, w.event_id, w.workflow, w.version, w.tenant, w.trace_id, w.inputs, "
                "w.submitted_at FROM workflow_approvals a JOIN workflow_runs w ON w.plan_id = a.plan_id "
                "WHERE a.resume_run_key IS NOT NULL AND a.launched_at IS NULL ORDER BY a.decided_at LIMIT :n"
            ),
            {"n": limit},
        ).all()
    return [Resume(**r._mapping) for r in rows]


def mark_launched(engine: sa.Engine, run_keys: list[str]) -> None:
    """The resume runs of these keys exist: stop looking for them."""
    if not run_keys:
        return
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE workflow_approvals SET launched_at = now(), updated_at = now() "
                "WHERE resume_run_key IN :keys"
            ).bindparams(sa.bindparam("keys", expanding=True)),
            {"keys": run_keys},
        )


def run_outcome(conn: sa.Connection, plan_id: str, run_id: str) -> tuple[str, str] | None:
    """(`rejected` | `waiting_approval`, message) when this run stopped at a gate, else None.

    Read from the gate's `task_runs` rows of this run, which never change, so a late evaluation of an
    old run still tells what that run did.
    """
    rows = conn.execute(
        sa.text(
            "SELECT t.task_id, t.status, t.error, a.deadline FROM task_runs t LEFT JOIN workflow_approvals a "
            "ON a.plan_id = t.plan_id AND a.task_id = t.task_id WHERE t.plan_id = :p AND t.run_id = :r "
            "AND t.status IN ('waiting_approval', 'rejected') ORDER BY (t.status = 'rejected') DESC, t.id"
        ),
        {"p": plan_id, "r": run_id},
    ).all()
    if not rows:
        return None
    first = rows[0]
    if first.status == "rejected":
        return RUN_REJECTED, str(first.error)
    waiting = ", ".join(
        f"{r.task_id!r} (deadline {r.deadline.isoformat() if r.deadline else 'none'})" for r in rows
    )
    return RUN_WAITING, f"waiting for approval of {waiting}"
