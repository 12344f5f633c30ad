"""agentflow-dagster: a multi-agent AI workflow platform built as a Dagster code location."""

__version__ = "0.1.0"
