"""`agentflow api`: serve the HTTP gateway with uvicorn."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import click

from agentflow_dagster.api.config import ApiConfig


@click.command()
@click.option("--host", default=None, help="Bind address (default AGENTFLOW_API_HOST or 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default AGENTFLOW_API_PORT or 8080).")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes; /metrics sums them (prometheus_client multiprocess mode).",
)
@click.option("--no-migrate", is_flag=True, help="Skip bringing the app schema to the newest revision.")
@click.option(
    "--no-tracing", is_flag=True, help="Do not export spans (OTEL_* variables choose the exporter)."
)
def api(host: str | None, port: int | None, workers: int, no_migrate: bool, no_tracing: bool) -> None:
    """Serve the gateway (OpenAPI at /openapi.json, docs at /docs)."""
    import uvicorn

    from agentflow_dagster.db import migrate
    from agentflow_dagster.resources_env import build_resources
    from agentflow_dagster.settings import get_settings

    if not no_tracing:
        os.environ.setdefault("AGENTFLOW_API_TRACING", "true")  # read by every worker's create_app
    config = ApiConfig()
    if not no_migrate:
        migrate(build_resources(get_settings())["postgres"].url)
    bind_host, bind_port = host or config.host, port or config.port
    made = multiprocess_metrics_dir() if workers > 1 else None
    click.echo(f"agentflow api on http://{bind_host}:{bind_port} (OpenAPI: /openapi.json)")
    try:
        # The factory string lets each worker process build its own clients.
        uvicorn.run(
            "agentflow_dagster.api.app:create_app",
            factory=True,
            host=bind_host,
            port=bind_port,
            workers=workers,
            proxy_headers=True,
            server_header=False,
        )
    finally:
        if made:
            shutil.rmtree(made, ignore_errors=True)


def multiprocess_metrics_dir() -> str | None:
    """Point PROMETHEUS_MULTIPROC_DIR at an empty directory before the workers start.

    Workers are separate processes: each would serve only its own counters on /metrics. In
    multiprocess mode each writes its values to files there and every scrape sums them. A directory
    given by the operator is emptied of the previous run's value files; else a temporary one is made
    (returned, to be removed at exit).
    """
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        for stale in Path(given).glob("*.db"):
            stale.unlink()
        return None
    made = tempfile.mkdtemp(prefix="agentflow-api-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = made  # inherited by the worker processes
    return made
