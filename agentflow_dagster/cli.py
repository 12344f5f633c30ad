"""The `agentflow` command line."""

from __future__ import annotations

import warnings

import click

from agentflow_dagster.commands import (
    api,
    approve,
    audit,
    keys,
    observability,
    purge,
    rag,
    stack,
    submit,
    workflows,
)

# platformdirs (via pgserver) warns when XDG_RUNTIME_DIR is unset; it falls back to /tmp correctly.
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


@click.group()
def main() -> None:
    """agentflow: multi-agent AI workflows on Dagster."""


main.add_command(stack.up)
main.add_command(stack.status)
main.add_command(stack.down)
main.add_command(keys.keys)
main.add_command(api.api)
main.add_command(rag.ingest)
main.add_command(rag.search)
main.add_command(submit.submit)
main.add_command(approve.approve)
main.add_command(workflows.workflows)
main.add_command(observability.metrics_server)
main.add_command(observability.trace)
main.add_command(audit.audit)
main.add_command(purge.purge_command)
