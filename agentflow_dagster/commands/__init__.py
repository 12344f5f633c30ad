"""Sub-commands of the `agentflow` CLI, one module per area."""
