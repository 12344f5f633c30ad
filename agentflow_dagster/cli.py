"""The `agentflow` command line."""

from __future__ import annotations

import warnings

import click

from agentflow_dagster.commands import rag, stack

# platformdirs (via pgserver) warns when XDG_RUNTIME_DIR is unset; it falls back to /tmp correctly.
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


@click.group()
def main() -> None:
    """agentflow: multi-agent AI workflows on Dagster."""


main.add_command(stack.up)
main.add_command(stack.status)
main.add_command(stack.down)
# Other areas register their commands below, one line each.
main.add_command(__import__("agentflow_dagster.commands.keys", fromlist=["keys"]).keys)
main.add_command(__import__("agentflow_dagster.commands.api", fromlist=["api"]).api)
main.add_command(rag.ingest)
main.add_command(rag.search)
main.add_command(__import__("agentflow_dagster.commands.submit", fromlist=["submit"]).submit)
main.add_command(__import__("agentflow_dagster.commands.workflows", fromlist=["workflows"]).workflows)
main.add_command(__import__("agentflow_dagster.commands.observability", fromlist=["x"]).metrics_server)
main.add_command(__import__("agentflow_dagster.commands.observability", fromlist=["x"]).trace)
main.add_command(__import__("agentflow_dagster.commands.purge", fromlist=["x"]).purge_command)
