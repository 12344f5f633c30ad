"""`agentflow metrics-server` (Prometheus /metrics) and `agentflow trace PLAN_ID` (a workflow's timeline)."""

from __future__ import annotations

import json
import signal
import threading
from typing import Any

import click

from agentflow_dagster.db import make_engine
from agentflow_dagster.observability.timeline import load_timeline, render_timeline
from agentflow_dagster.settings import get_settings


def _postgres_url() -> str:
    s = get_settings()
    return s.postgres_url or f"postgresql://postgres@127.0.0.1:{s.postgres_port}/agentflow"


@click.command("metrics-server")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=None, help="defaults to AGENTFLOW_METRICS_PORT (9464)")
def metrics_server(host: str, port: int | None) -> None:
    """Serve /metrics, derived from Postgres, Dagster, Kafka and the stack's processes."""
    import dagster as dg

    from agentflow_dagster.observability.metrics import AgentflowCollector, build_registry, serve
    from resources.kafka import KafkaResource

    s = get_settings()
    kafka = KafkaResource(bootstrap_servers=s.kafka_bootstrap_servers or f"127.0.0.1:{s.kafka_port}")
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


@click.command("trace")
@click.argument("plan_id")
@click.option("--json", "as_json", is_flag=True, help="print the timeline as JSON")
def trace(plan_id: str, as_json: bool) -> None:
    """Print PLAN_ID's timeline: tasks, attempts, LLM calls, tokens, cost, errors, evaluations."""
    engine = make_engine(_postgres_url())
    try:
        doc = load_timeline(engine, plan_id)
    finally:
        engine.dispose()
    if doc is None:
        raise click.ClickException(f"no workflow run with plan_id {plan_id!r} in {_postgres_url()}")
    click.echo(json.dumps(doc, indent=2, default=str) if as_json else render_timeline(doc))
