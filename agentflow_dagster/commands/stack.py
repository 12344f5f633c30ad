"""`agentflow up|status|down`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from agentflow_dagster.settings import Settings
from agentflow_dagster.stack.services import StackError
from agentflow_dagster.stack.stack import Stack


def _stack(data_dir: str | None, llm_gguf: Path | None = None, project: Path | None = None) -> Stack:
    settings = Settings(data_dir=Path(data_dir)) if data_dir else Settings()
    if llm_gguf:
        settings.llm_gguf = llm_gguf
    if project:
        settings.project_dir = project
    return Stack(settings)


data_dir_option = click.option(
    "--data-dir", envvar="AGENTFLOW_DATA_DIR", default=None, help="Stack data directory (default .agentflow)."
)


@click.command()
@data_dir_option
@click.option(
    "--llm-gguf",
    envvar="AGENTFLOW_LLM_GGUF",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also serve this GGUF model with llama.cpp on loopback and point the platform at it.",
)
@click.option(
    "--project",
    envvar="AGENTFLOW_PROJECT_DIR",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="The user project Dagster serves (default: the shipped example project).",
)
def up(data_dir: str | None, llm_gguf: Path | None, project: Path | None) -> None:
    """Start the local stack (Postgres, Redis, Kafka broker, object store, Dagster; a model server)."""
    if project:
        from agentflow_dagster.project import ProjectError, load_project

        try:
            load_project(project)  # a broken project is reported here, not as a failed code location
        except (ProjectError, ValueError) as exc:
            raise click.ClickException(f"project {project}: {exc}") from None
    stack = _stack(data_dir, llm_gguf, project)
    click.echo(f"agentflow up: data directory {stack.data}")
    try:
        addr = stack.up(echo=click.echo)
    except StackError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Dagster UI: {addr['dagster_webserver']}")


@click.command()
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(data_dir: str | None, as_json: bool) -> None:
    """Check every component for real; exit 1 when any is down."""
    results = _stack(data_dir).status()
    if as_json:
        click.echo(json.dumps([c.as_dict() for c in results], indent=2))
    else:
        click.echo(f"{'component':<18} {'state':<6} {'address':<48} detail")
        for c in results:
            state = "ok" if c.healthy else "DOWN"
            click.echo(f"{c.component:<18} {state:<6} {c.address:<48} {c.detail}")
    sys.exit(0 if all(c.healthy for c in results) else 1)


@click.command()
@data_dir_option
def down(data_dir: str | None) -> None:
    """Stop what `agentflow up` started for this data directory, and only that."""
    stopped = _stack(data_dir).down(echo=click.echo)
    if not stopped:
        click.echo("nothing to stop")
