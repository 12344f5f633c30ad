"""`agentflow purge`: retention for Dagster runs (with their event logs) and the execution history tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import click
import sqlalchemy as sa

from agentflow_dagster.events import FINISHED_STATUSES

# Child tables first; workflow_runs last, so a purge stopped halfway leaves no orphan rows behind.
HISTORY_TABLES = (
    "task_runs",
    "task_outputs",
    "llm_calls",
    "retrievals",
    "published_results",
    "workflow_approvals",
    "approval_events",
    "workflow_runs",
)
BATCH = 500


@dataclass
class PurgeReport:
    """What a purge deleted (or, with dry_run, would delete)."""

    cutoff: datetime
    dagster_runs: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False


def purge_dagster_runs(instance: Any, cutoff: datetime, dry_run: bool = False, limit: int = 100_000) -> int:
    """Delete finished runs last updated before `cutoff`, with their event logs, via the instance API."""
    import dagster as dg

    statuses = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]
    filters = dg.RunsFilter(statuses=statuses, updated_before=cutoff)
    if dry_run:
        return int(instance.get_runs_count(filters=filters))
    deleted = 0
    while deleted < limit:
        records = instance.get_run_records(filters=filters, limit=BATCH, ascending=True)
        if not records:
            break
        for record in records:
            instance.delete_run(record.dagster_run.run_id)
            deleted += 1
    return deleted


def purge_history(
    engine: sa.Engine, cutoff: datetime, include_audit: bool = False, dry_run: bool = False
) -> dict[str, int]:
    """Delete history rows of plans that finished before `cutoff`; the audit log only with include_audit."""
    plans = "SELECT plan_id FROM workflow_runs WHERE status IN :terminal AND finished_at < :cutoff"
    params: dict[str, Any] = {"terminal": FINISHED_STATUSES, "cutoff": cutoff}
    counts: dict[str, int] = {}
    stmt = sa.text(plans).bindparams(sa.bindparam("terminal", expanding=True))
    with engine.begin() as conn:
        ids = [r[0] for r in conn.execute(stmt, params)]
        for table in HISTORY_TABLES:
            counts[table] = 0
            for i in range(0, len(ids), BATCH):
                chunk = ids[i : i + BATCH]
                if dry_run:
                    sql = f"SELECT count(*) FROM {table} WHERE plan_id = ANY(:ids)"
                    counts[table] += int(conn.execute(sa.text(sql), {"ids": chunk}).scalar_one())
                else:
                    sql = f"DELETE FROM {table} WHERE plan_id = ANY(:ids)"
                    counts[table] += conn.execute(sa.text(sql), {"ids": chunk}).rowcount
        if include_audit:
            verb = "SELECT count(*)" if dry_run else "DELETE"
            result = conn.execute(sa.text(f"{verb} FROM audit_log WHERE at < :cutoff"), {"cutoff": cutoff})
            counts["audit_log"] = int(result.scalar_one()) if dry_run else result.rowcount
    return counts


def purge(
    instance: Any,
    engine: sa.Engine,
    older_than_days: float,
    include_audit: bool = False,
    dry_run: bool = False,
) -> PurgeReport:
    """Dagster runs first (the run-status sensors then have nothing old left to report), then our rows."""
    cutoff = datetime.now(UTC) - timedelta(days=older_than_days)
    report = PurgeReport(cutoff=cutoff, dry_run=dry_run)
    report.dagster_runs = purge_dagster_runs(instance, cutoff, dry_run)
    report.rows = purge_history(engine, cutoff, include_audit, dry_run)
    return report


@click.command()
@click.option("--older-than", "days", type=click.FloatRange(min=0), required=True, metavar="DAYS")
@click.option("--include-audit", is_flag=True, help="also delete audit_log entries older than DAYS")
@click.option("--dry-run", is_flag=True, help="count what would be deleted, delete nothing")
def purge_command(days: float, include_audit: bool, dry_run: bool) -> None:
    """Delete finished runs (and their event logs) and history rows older than DAYS; the audit log stays."""
    import dagster as dg

    from agentflow_dagster.db import make_engine
    from agentflow_dagster.resources_env import build_resources
    from agentflow_dagster.settings import get_settings

    engine = make_engine(build_resources(get_settings())["postgres"].url)
    try:
        with dg.DagsterInstance.get() as instance:
            report = purge(instance, engine, days, include_audit, dry_run)
    finally:
        engine.dispose()
    verb = "would delete" if dry_run else "deleted"
    click.echo(
        f"cutoff {report.cutoff.isoformat(timespec='seconds')}: {verb} {report.dagster_runs} Dagster runs"
    )
    for table, n in report.rows.items():
        click.echo(f"  {table:<18} {n}")


purge_command.name = "purge"
