"""`agentflow metrics-server` (Prometheus /metrics) and `agentflow trace PLAN_ID|TRACE_ID` (a timeline)."""

from __future__ import annotations

import json
import re
import signal
import threading
from typing import Any

import click
import sqlalchemy as sa

from agentflow_dagster.api.schemas import PLAN_ID_PATTERN
from agentflow_dagster.clients import kafka_clients, postgres_url
from agentflow_dagster.db import make_engine
from agentflow_dagster.observability.timeline import load_timeline, render_timeline
from agentflow_dagster.settings import get_settings


def _postgres_url() -> str:
    return postgres_url(get_settings())


@click.command("metrics-server")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=None, help="defaults to AGENTFLOW_METRICS_PORT (9464)")
def metrics_server(host: str, port: int | None) -> None:
    """Serve /metrics, derived from Postgres, Dagster, Kafka and the stack's processes."""
    import dagster as dg

    from agentflow_dagster.observability.metrics import AgentflowCollector, build_registry, serve

    s = get_settings()
    kafka = kafka_clients(s)
    instance: list[Any] = []

    def get_instance() -> Any:
        if not instance:  # one instance per process: it holds a connection pool
            instance.append(dg.DagsterInstance.get())
        return instance[0]

    collector = AgentflowCollector(
        engine=make_engine(_postgres_url()),
        instance_factory=get_instance,
        kafka_consumer_factory=lambda: kafka.consumer(),
        stack_state=s.data_path / "stack.json",
    )
    server, _ = serve(build_registry(collector), host, port or s.metrics_port)
    click.echo(f"metrics on http://{host}:{server.server_port}/metrics")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()


TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


def plans_for(engine: sa.Engine, ref: str) -> list[str]:
    """The plan ids a plan id or a W3C trace id (32 hex) refers to."""
    if re.match(PLAN_ID_PATTERN, ref):
        return [ref]
    if not TRACE_ID.match(ref.lower()):
        raise click.BadParameter(f"{ref!r} is neither a plan id (plan-<20 hex>) nor a trace id (32 hex)")
    with engine.connect() as conn:
        # The plan's own row first; a trace id only seen on calls (e.g. an approval's resumed run) too.
        found = conn.execute(
            sa.text(
                "SELECT plan_id FROM workflow_runs WHERE trace_id = :t UNION "
                "SELECT plan_id FROM llm_calls WHERE trace_id = :t AND plan_id IS NOT NULL UNION "
                "SELECT plan_id FROM retrievals WHERE trace_id = :t ORDER BY 1"
            ),
            {"t": ref.lower()},
        ).scalars()
        return list(found)


def _rows(conn: sa.Connection, sql: str, **params: Any) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in conn.execute(sa.text(sql), params)]


def load_activity(engine: sa.Engine, plan_id: str) -> dict[str, Any]:
    """The plan's retrievals and tool calls (`tool_calls` is null when that table does not exist)."""
    with engine.connect() as conn:
        retrievals = _rows(
            conn,
            "SELECT created_at, task_id, run_id, collection, k, mode, backend, index_name, latency_ms, "
            "jsonb_array_length(hits) AS hits, error FROM retrievals WHERE plan_id = :p "
            "ORDER BY created_at, id",
            p=plan_id,
        )
        has_tools = conn.execute(sa.text("SELECT to_regclass('tool_calls') IS NOT NULL")).scalar()
        tool_calls = (
            _rows(
                conn,
                "SELECT created_at, task_id, attempt, run_id, tool, call_digest, status, latency_ms, "
                "side_effects, result_ref, error FROM tool_calls WHERE plan_id = :p ORDER BY created_at, id",
                p=plan_id,
            )
            if has_tools
            else None
        )
    return {"retrievals": retrievals, "tool_calls": tool_calls}


def render_activity(activity: dict[str, Any]) -> str:
    """Retrievals and tool calls, one line each."""
    lines = [f"retrievals: {len(activity['retrievals'])}"]
    for r in activity["retrievals"]:
        err = f"  error: {r['error'][:160]}" if r["error"] else ""
        lines.append(
            f"  {r['created_at']}  task {r['task_id']} {r['collection']} k={r['k']} mode={r['mode']} "
            f"{r['backend']}:{r['index_name']} {r['hits']} hits {r['latency_ms'] or 0:.0f}ms{err}"
        )
    calls = activity["tool_calls"]
    if calls is None:
        lines.append(
            "tool calls: not recorded by this database (table tool_calls missing: agentflow up migrates)"
        )
        return "\n".join(lines)
    lines.append(f"tool calls: {len(calls)}")
    for c in calls:
        err = f"  error: {c['error'][:160]}" if c["error"] else ""
        lines.append(
            f"  {c['created_at']}  task {c['task_id']} attempt {c['attempt']} tool {c['tool']} "
            f"{c['status']} {c['latency_ms'] or 0:.0f}ms side_effects={c['side_effects']} "
            f"digest {c['call_digest'][:12]}{err}"
        )
    return "\n".join(lines)


@click.command("trace")
@click.argument("ref", metavar="PLAN_ID|TRACE_ID")
@click.option("--json", "as_json", is_flag=True, help="print the timeline as JSON")
def trace(ref: str, as_json: bool) -> None:
    """Print a workflow's timeline: tasks, attempts, LLM calls, retrievals, tool calls, tokens, cost,
    errors, evaluations. REF is a plan id or the W3C trace id of its trace."""
    engine = make_engine(_postgres_url())
    try:
        docs = []
        for plan_id in plans_for(engine, ref):
            doc = load_timeline(engine, plan_id)
            if doc is not None:
                docs.append(doc | load_activity(engine, plan_id))
    finally:
        engine.dispose()
    if not docs:
        raise click.ClickException(f"no workflow run with plan or trace id {ref!r} in {_postgres_url()}")
    if as_json:
        click.echo(json.dumps(docs[0] if len(docs) == 1 else docs, indent=2, default=str))
        return
    click.echo("\n\n".join(f"{render_timeline(d)}\n{render_activity(d)}" for d in docs))
