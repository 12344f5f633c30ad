"""`agentflow purge`: old finished runs and history rows go, recent ones and the audit log stay."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import dagster as dg
import sqlalchemy as sa

from agentflow_dagster.commands.purge import purge, purge_dagster_runs


@dg.op
def _noop() -> int:
    return 1


@dg.job
def _tiny() -> None:
    _noop()


def _plan(engine: sa.Engine, finished_days_ago: float | None, status: str = "succeeded") -> str:
    """A workflow_runs row (finished that many days ago, or still running) with one child row each."""
    plan = f"plan-purge-{uuid.uuid4().hex[:12]}"
    finished = None if finished_days_ago is None else datetime.now(UTC) - timedelta(days=finished_days_ago)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO workflow_runs (plan_id, event_id, workflow, version, tenant, status, inputs, "
                "finished_at) VALUES (:p, :e, 'wf', '1', 'default', :s, CAST(:i AS jsonb), :f)"
            ),
            {"p": plan, "e": f"ev-{plan}", "s": status, "i": json.dumps({}), "f": finished},
        )
        conn.execute(
            sa.text(
                "INSERT INTO task_runs (plan_id, task_id, agent, run_id, attempt, status) "
                "VALUES (:p, 't', 'a', 'r', 1, 'succeeded')"
            ),
            {"p": plan},
        )
        conn.execute(
            sa.text("INSERT INTO audit_log (plan_id, actor, action) VALUES (:p, 'test', 'task.succeeded')"),
            {"p": plan},
        )
        conn.execute(
            sa.text("INSERT INTO workflow_approvals (plan_id, task_id, status) VALUES (:p, 't', 'approved')"),
            {"p": plan},
        )
        conn.execute(
            sa.text(
                "INSERT INTO approval_events (event_id, plan_id, task_id, decision, actor, tenant, "
                "decided_at, outcome) VALUES (:e, :p, 't', 'approve', 'test', 'default', now(), 'recorded')"
            ),
            {"e": f"approval-{plan}", "p": plan},
        )
    return plan


def _count(engine: sa.Engine, table: str, plan: str) -> int:
    query = sa.text(f"SELECT count(*) FROM {table} WHERE plan_id = :p")
    with engine.connect() as conn:
        return int(conn.execute(query, {"p": plan}).scalar_one())


def test_purge_deletes_old_finished_work_and_keeps_the_rest(engine: sa.Engine) -> None:
    old, recent, running = _plan(engine, 40), _plan(engine, 1), _plan(engine, None, status="running")
    rejected, waiting = _plan(engine, 40, status="rejected"), _plan(engine, None, status="waiting_approval")
    with dg.instance_for_test() as instance:
        run_id = _tiny.execute_in_process(instance=instance).run_id
        assert instance.get_run_by_id(run_id) is not None

        dry = purge(instance, engine, 0.0, dry_run=True)
        assert dry.dagster_runs == 1 and instance.get_run_by_id(run_id) is not None
        assert _count(engine, "workflow_runs", old) == 1

        report = purge(instance, engine, 30)
        assert report.dagster_runs == 0  # the run is newer than 30 days
        assert report.rows["workflow_runs"] >= 1 and report.rows["task_runs"] >= 1
        assert _count(engine, "workflow_runs", old) == 0 and _count(engine, "task_runs", old) == 0
        for table in ("workflow_runs", "workflow_approvals", "approval_events"):
            assert _count(engine, table, rejected) == 0, f"{table} of an old rejected plan"
            assert _count(engine, table, old) == 0
        assert _count(engine, "audit_log", old) == 1, "the audit log stays without --include-audit"
        for kept in (recent, running, waiting):
            assert _count(engine, "workflow_runs", kept) == 1 and _count(engine, "task_runs", kept) == 1
            assert _count(engine, "workflow_approvals", kept) == 1

        # Runs only: the history tables are shared with the rest of the session's tests.
        assert purge_dagster_runs(instance, datetime.now(UTC)) == 1
        assert instance.get_run_by_id(run_id) is None
        assert not list(instance.all_logs(run_id)), "the run's event log goes with it"
    assert _count(engine, "workflow_runs", running) == 1, "unfinished plans are never purged"
