"""`agentflow init | validate | reload`: create, check and reload a user project."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import click


@click.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", default=None, help="Project name (default: the folder's name).")
def init(directory: Path, name: str | None) -> None:
    """Create a project: agentflow.yaml, agents/, tools/, workflows/, prompts/ and a README."""
    from agentflow_dagster.project.scaffold import init_project

    try:
        files = init_project(directory, name)
    except (FileExistsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    for path in files:
        click.echo(f"  created {path.relative_to(directory.resolve())}")
    click.echo(f"next: agentflow validate {directory} && agentflow up --project {directory}")


@click.command("validate")
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def validate(directory: Path | None, as_json: bool) -> None:
    """Load and check a project (default: the current one); exit 1 naming the file and field at fault."""
    from agentflow_dagster.project import load_project, project_dir

    root = directory or project_dir()
    try:
        project = load_project(root)
    except ValueError as exc:  # ProjectError and the workflow loader's SpecError
        if as_json:
            click.echo(json.dumps({"ok": False, "project": str(root), "error": str(exc)}))
        raise click.ClickException(str(exc)) from None
    summary = {
        "ok": True,
        "project": str(project.root),
        "name": project.name,
        "fingerprint": project.fingerprint,
        "agents": sorted(project.agents),
        "tools": project.tools.names(),
        "workflows": {n: s.version for n, s in sorted(project.workflows.items())},
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"project {project.name} ({project.root}): ok")
    click.echo(f"  agents:    {', '.join(summary['agents'])}")
    click.echo(f"  tools:     {', '.join(summary['tools']) or '(none)'} (+ built-in retrieval)")
    click.echo(f"  workflows: {', '.join(f'{n} {v}' for n, v in summary['workflows'].items())}")


RELOAD = """mutation($name: String!) { reloadRepositoryLocation(repositoryLocationName: $name) {
  __typename ... on WorkspaceLocationEntry { name locationOrLoadError { __typename
    ... on PythonError { message } } } ... on PythonError { message } } }"""


@click.command("reload")
@click.option("--data-dir", envvar="AGENTFLOW_DATA_DIR", default=None, help="Stack data directory.")
@click.option("--location", default="agentflow", show_default=True, help="Dagster code location name.")
def reload(data_dir: str | None, location: str) -> None:
    """Pick up edited project files without restarting the stack (Dagster's "Reload definitions").

    The project is validated first (a broken one is not loaded); the webserver's code location is
    reloaded, and the daemon's sensors are restarted so that new workflows get runs. Runs started
    afterwards use the new files: run workers compare the project's fingerprint before each run.
    """
    import httpx

    from agentflow_dagster.commands.stack import _stack
    from agentflow_dagster.project import load_project, project_dir
    from agentflow_dagster.stack import services

    stack = _stack(data_dir)
    root = Path(stack.process_env().get("AGENTFLOW_PROJECT_DIR") or project_dir())
    try:
        project = load_project(root)
    except ValueError as exc:
        raise click.ClickException(f"not reloaded: {exc}") from None
    started = time.monotonic()
    url = stack.addresses()["dagster_webserver"] + "/graphql"
    try:
        reply = httpx.post(url, json={"query": RELOAD, "variables": {"name": location}}, timeout=120).json()
    except httpx.HTTPError as exc:
        raise click.ClickException(
            f"Dagster webserver at {url} unreachable ({exc}); is `agentflow up` running?"
        ) from None
    entry = (reply.get("data") or {}).get("reloadRepositoryLocation") or {}
    error = (entry.get("locationOrLoadError") or {}).get("message") or entry.get("message")
    if error or reply.get("errors"):
        raise click.ClickException(f"reload failed: {error or reply.get('errors')}")
    state = stack.load_state()
    daemon = state["services"].get("dagster_daemon")
    if daemon and daemon.get("managed"):
        # The daemon's sensors evaluate in its own code server: restart it so it sees new workflows.
        if services.pid_alive(daemon["pid"]):
            services.stop_pid(daemon["pid"])
        svc = stack._start_daemon()
        state["services"]["dagster_daemon"] = {"managed": True, **asdict(svc)}
        stack.save_state(state)
    click.echo(
        f"reloaded project {project.name} (fingerprint {project.fingerprint}, "
        f"{len(project.workflows)} workflows, {len(project.agents)} agents) in "
        f"{time.monotonic() - started:.1f} s"
    )
