"""`python -m agentflow_dagster` is the `agentflow` command."""

from agentflow_dagster.cli import main

main()
