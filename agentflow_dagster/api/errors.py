"""Error answers shaped like FastAPI's own, and 503 for failed backing services."""

from __future__ import annotations

import logging

import redis as redis_lib
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from agentflow_dagster.api.context import Unavailable
from resources.object_store import ObjectStoreError

log = logging.getLogger("agentflow.api")


def invalid(loc: tuple[str, ...], msg: str) -> RequestValidationError:
    """A 422 with the same body shape as a schema violation, so clients parse one format."""
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": msg, "input": None}])


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    # The exception text names the service and address, never a credential or header.
    log.warning("%s %s: backing service failed: %s", request.method, request.url.path, type(exc).__name__)
    return JSONResponse(
        {"detail": f"service unavailable: {type(exc).__name__}; retry later"}, status_code=503
    )


def install(app: FastAPI) -> None:
    """Map backing-service failures to 503 instead of 500."""
    for exc_type in (
        Unavailable,
        sa.exc.OperationalError,
        sa.exc.InterfaceError,
        sa.exc.TimeoutError,
        redis_lib.exceptions.ConnectionError,
        redis_lib.exceptions.TimeoutError,
        ObjectStoreError,
    ):
        app.add_exception_handler(exc_type, _unavailable)
