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
    project,
    purge,
    rag,
    runs,
    stack,
    submit,
    workflows,
)

# platformdirs (via pgserver) warns when XDG_RUNTIME_DIR is unset; it falls back to /tmp correctly.
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


@click.group()
@click.version_option(package_name="agentflow-dagster", prog_name="agentflow")
def main() -> None:
    """agentflow: multi-agent AI workflows on Dagster."""


main.add_command(stack.up)
main.add_command(project.init)
main.add_command(project.validate)
main.add_command(project.reload)
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
main.add_command(runs.runs)
main.add_command(runs.cancel)
main.add_command(runs.retry)
main.add_command(runs.approvals)
