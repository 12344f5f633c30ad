"""The HTTP gateway: FastAPI app factory, API keys, limits."""

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # Lazy: CLI commands import `api.schemas` and friends without paying for FastAPI and the app.
    if name == "create_app":
        from agentflow_dagster.api.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
