"""Execution history: `workflow_runs` (one row per plan) and `task_runs` (one row per task attempt)."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from agentflow_dagster.db import transaction


def upsert_workflow_running(
    bind: sa.Engine | sa.Connection, request: dict[str, Any], run_id: str, audit: AuditRow | None = None
) -> None:
    """Insert or re-open the plan's row as running and remember this Dagster run id (and write `audit`)."""
    with transaction(bind) as conn:
        conn.execute(
            *with_audit(
                audit,
                "INSERT INTO workflow_runs (plan_id, event_id, workflow, version, tenant, status, trace_id, "
                "inputs, dagster_run_ids, submitted_at, started_at, updated_at) VALUES (:plan_id, :event_id, "
                ":workflow, :version, :tenant, 'running', :trace_id, CAST(:inputs AS jsonb), "
                "jsonb_build_array(CAST(:run_id AS text)), CAST(:submitted_at AS timestamptz), now(), now()) "
                "ON CONFLICT (plan_id) DO UPDATE SET status = 'running', error = NULL, finished_at = NULL, "
                "updated_at = now(), started_at = COALESCE(workflow_runs.started_at, now()), "
                "dagster_run_ids = CASE "
                "WHEN workflow_runs.dagster_run_ids @> jsonb_build_array(CAST(:run_id AS text)) "
                "THEN workflow_runs.dagster_run_ids "
                "ELSE workflow_runs.dagster_run_ids || jsonb_build_array(CAST(:run_id AS text)) END",
                {
                    "plan_id": request["plan_id"],
                    "event_id": request["event_id"],
                    "workflow": request["workflow"],
                    "version": request["version"],
                    "tenant": request["tenant"],
                    "trace_id": request.get("trace_id"),
                    "inputs": json.dumps(request.get("inputs_record")),
                    "run_id": run_id,
                    "submitted_at": request.get("submitted_at"),
                },
            )
        )


def finish_workflow(
    bind: sa.Engine | sa.Connection,
    plan_id: str,
    status: str,
    output: dict[str, Any] | None = None,
    error: str | None = None,
    audit: AuditRow | None = None,
) -> None:
    """Set the final status (succeeded or failed) with the output or the error (and write `audit`)."""
    with transaction(bind) as conn:
        conn.execute(
            *with_audit(
                audit,
                "UPDATE workflow_runs SET status = :s, output = CAST(:o AS jsonb), error = :e, "
                "finished_at = now(), updated_at = now() WHERE plan_id = :p",
                {
                    "s": status,
                    "o": json.dumps(output) if output is not None else None,
                    "e": error,
                    "p": plan_id,
                },
            )
        )


@dataclass(frozen=True)
class AuditRow:
    """An audit_log entry written in the same transaction as a history row (one commit, not two)."""

    actor: str
    action: str
    plan_id: str | None
    subject: str
    detail: dict[str, Any]

    def params(self) -> dict[str, Any]:
        return {
            "audit_plan": self.plan_id,
            "audit_actor": self.actor,
            "audit_action": self.action,
            "audit_subject": self.subject,
            "audit_detail": json.dumps(self.detail, default=str),
        }

    def insert(self, conn: sa.Connection) -> None:
        conn.execute(_text(_AUDIT_INSERT), self.params())


_AUDIT_INSERT = (
    "INSERT INTO audit_log (plan_id, actor, action, subject, detail) "
    "VALUES (:audit_plan, :audit_actor, :audit_action, :audit_subject, CAST(:audit_detail AS jsonb))"
)


def with_audit(
    audit: AuditRow | None, sql: str, params: dict[str, Any]
) -> tuple[sa.TextClause, dict[str, Any]]:
    """`sql` with `audit`'s row inserted by the same statement (a data-modifying WITH): one round trip."""
    if audit is None:
        return _text(sql), params
    return _text(f"WITH audit_entry AS ({_AUDIT_INSERT}) {sql}"), {**params, **audit.params()}


@functools.lru_cache(maxsize=64)
def _text(sql: str) -> sa.TextClause:
    """A statement built once per process (`sa.text` parses the bind parameters of the string)."""
    return sa.text(sql)


def start_task_run(
    bind: sa.Engine | sa.Connection,
    plan_id: str,
    task_key: str,
    agent: str,
    run_id: str,
    attempt: int,
    audit: AuditRow | None = None,
    *,
    reused: bool = False,
) -> int:
    """Open a `task_runs` row for one attempt (and its audit entry, if given); returns its id.

    `reused`: the attempt reused a stored output, so its row is written finished (succeeded) at once.
    """
    statement = with_audit(
        audit,
        "INSERT INTO task_runs (plan_id, task_id, agent, run_id, attempt, status, reused, finished_at) "
        "VALUES (:p, :t, :a, :r, :n, :s, :reused, CASE WHEN :reused THEN now() END) RETURNING id",
        {
            "p": plan_id,
            "t": task_key,
            "a": agent,
            "r": run_id,
            "n": attempt,
            "s": "succeeded" if reused else "running",
            "reused": reused,
        },
    )
    with transaction(bind) as conn:
        return int(conn.execute(*statement).scalar_one())


def finish_task_run(
    bind: sa.Engine | sa.Connection,
    row_id: int,
    status: str,
    *,
    error: str | None = None,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cost_usd: float = 0.0,
    reused: bool = False,
    audit: AuditRow | None = None,
) -> None:
    """Close an attempt's row with its status, error, tokens and cost (and its audit entry, if given)."""
    statement = with_audit(
        audit,
        "UPDATE task_runs SET status = :s, error = :e, input_tokens = :i, output_tokens = :o, "
        "cost_usd = :c, reused = :reused, finished_at = now() WHERE id = :id",
        {
            "s": status,
            "e": error,
            "i": input_tokens,
            "o": output_tokens,
            "c": cost_usd,
            "reused": reused,
            "id": row_id,
        },
    )
    with transaction(bind) as conn:
        conn.execute(*statement)
