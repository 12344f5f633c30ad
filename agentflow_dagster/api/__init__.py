"""The HTTP gateway: FastAPI app factory, API keys, limits."""

from agentflow_dagster.api.app import create_app

__all__ = ["create_app"]
