"""`agentflow runs list`, `agentflow cancel`, `agentflow retry`, `agentflow approvals`: operating workflows.

The same operations as the API's `GET /v1/workflows`, `POST .../cancel`, `POST .../retry` and
`GET /v1/approvals` (agentflow_dagster/operations.py); the CLI is an operator's tool, so it sees every
tenant unless --tenant narrows it.
"""

from __future__ import annotations

import getpass
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

import click
import sqlalchemy as sa

from agentflow_dagster import operations
from agentflow_dagster.api.schemas import PLAN_ID_PATTERN, WorkflowStatus
from agentflow_dagster.resources_env import build_resources
from agentflow_dagster.settings import get_settings

STATUSES: tuple[str, ...] = get_args(WorkflowStatus)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(value: str, option: str) -> datetime:
    """An ISO 8601 time, or an age such as 30m, 2h, 7d (that long ago)."""
    raw = value.strip()
    if raw[:-1].isdigit() and raw[-1:] in _UNITS:
        return datetime.now(UTC) - timedelta(seconds=int(raw[:-1]) * _UNITS[raw[-1]])
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither an ISO 8601 time nor an age like 30m, 2h or 7d", param_hint=option
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _postgres() -> Any:
    return build_resources(get_settings())["postgres"]


def _guarded(call: Callable[[], Any]) -> Any:
    """Backing-service failures as one line that says where to look."""
    try:
        return call()
    except sa.exc.OperationalError as exc:
        raise click.ClickException(f"Postgres unreachable: {exc.orig} (see `agentflow status`)") from exc
    except operations.OperationError as exc:
        raise click.ClickException(str(exc)) from exc


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


@click.group("runs")
def runs() -> None:
    """Workflows in the execution history (see also `agentflow cancel`, `retry`, `approvals`)."""


@runs.command("list")
@click.option("--status", "statuses", multiple=True, type=click.Choice(STATUSES), help="repeatable")
@click.option("--tenant", default=None)
@click.option("--workflow", default=None)
@click.option("--since", default=None, help="submitted at or after: ISO 8601 or an age (30m, 2h, 7d)")
@click.option("--until", default=None, help="submitted before: ISO 8601 or an age")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, operations.MAX_LIST))
@click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
def list_runs(
    statuses: tuple[str, ...],
    tenant: str | None,
    workflow: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List workflows, newest first."""
    engine = _postgres().engine
    rows = _guarded(
        lambda: operations.list_workflows(
            engine,
            tenant=tenant,
            statuses=statuses,
            workflow=workflow,
            since=parse_time(since, "--since") if since else None,
            until=parse_time(until, "--until") if until else None,
            limit=limit,
        )
    )
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    table = [
        [
            r["plan_id"],
            r["workflow"],
            r["tenant"],
            r["status"],
            _when(r["submitted_at"]),
            _when(r["finished_at"]),
        ]
        for r in rows
    ]
    click.echo(
        _table(["PLAN_ID", "WORKFLOW", "TENANT", "STATUS", "SUBMITTED (UTC)", "FINISHED (UTC)"], table)
    )


def _dagster_url() -> str:
    return f"http://127.0.0.1:{get_settings().webserver_port}"


def _plan_id(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not re.match(PLAN_ID_PATTERN, value):
        raise click.BadParameter(f"{value!r} is not a plan id (plan-<20 hex>)")
    return value


def _action(name: str, help_text: str) -> click.Command:
    """`agentflow cancel` and `agentflow retry` share their options and their audit trail."""
    do = operations.cancel_plan if name == "cancel" else operations.retry_plan

    @click.command(name, help=help_text)
    @click.argument("plan_id", callback=_plan_id)
    @click.option("--reason", default="", help="why; stored in the audit log")
    @click.option("--actor", default=None, help="who acts (default: cli:<login name>)")
    @click.option(
        "--dagster-url",
        default=_dagster_url,
        show_default="http://127.0.0.1:$AGENTFLOW_WEBSERVER_PORT (3000)",
        help="the Dagster webserver whose GraphQL API terminates or re-executes runs",
    )
    @click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
    def command(plan_id: str, reason: str, actor: str | None, dagster_url: str, as_json: bool) -> None:
        postgres = _postgres()
        outcome = _guarded(
            lambda: do(
                postgres.engine,
                operations.DagsterRuns(dagster_url),
                plan_id,
                actor=actor or f"cli:{getpass.getuser()}",
                audit=postgres.audit,
                reason=reason,
            )
        )
        if as_json:
            click.echo(json.dumps(outcome.as_dict(), indent=2))
            return
        for run in outcome.runs:
            click.echo(f"plan_id={plan_id} action={name} run_id={run.run_id} dagster_status={run.status}")
        for message in outcome.messages:
            click.echo(f"note: {message}", err=True)

    return command


cancel = _action(
    "cancel",
    "Cancel the queued or running workflow PLAN_ID (Dagster run termination; it ends `canceled`).",
)
retry = _action(
    "retry",
    "Retry the failed or canceled workflow PLAN_ID from failure (succeeded tasks are not run again).",
)


@click.command("approvals")
@click.option("--tenant", default=None)
@click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
def approvals(tenant: str | None, as_json: bool) -> None:
    """List the approvals waiting for a decision, nearest deadline first."""
    engine = _postgres().engine
    rows = _guarded(lambda: operations.list_approvals(engine, tenant=tenant))
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    table = [
        [r["plan_id"], r["task_id"], r["workflow"], r["tenant"], _when(r["deadline"]), r["on_timeout"] or "-"]
        for r in rows
    ]
    click.echo(_table(["PLAN_ID", "TASK_ID", "WORKFLOW", "TENANT", "DEADLINE (UTC)", "ON_TIMEOUT"], table))
    if rows:
        click.echo("decide with: agentflow approve PLAN_ID TASK_ID [--reject]", err=True)
