"""Authentication (Bearer API keys), scope checks and the per-tenant rate limit, as one dependency."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from agentflow_dagster.api.context import ApiContext
from agentflow_dagster.api.keys import authenticate
from agentflow_dagster.api.schemas import Error

bearer = HTTPBearer(auto_error=False, description="An API key from `agentflow keys create`: `Bearer af_...`")

AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Error, "description": "missing, unknown, expired or revoked API key"},
    403: {"model": Error, "description": "the key lacks the scope this endpoint needs"},
    429: {"model": Error, "description": "rate limit or token budget exceeded; see Retry-After"},
    503: {"model": Error, "description": "a backing service is unavailable; retry"},
}


@dataclass(frozen=True)
class Principal:
    """The caller: a tenant acting through one API key."""

    tenant: str
    key_prefix: str
    scopes: tuple[str, ...]

    @property
    def actor(self) -> str:
        """How the caller appears in the audit log (the prefix is not secret)."""
        return f"key:{self.key_prefix}"


def get_ctx(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


def too_many(detail: str, retry_after_s: int) -> HTTPException:
    return HTTPException(429, detail, headers={"Retry-After": str(retry_after_s)})


def require(scope: str) -> Callable[..., Principal]:
    """A dependency that admits keys holding `scope` (or admin) within their tenant's rate limit."""

    def dependency(
        ctx: ApiContext = Depends(get_ctx), creds: HTTPAuthorizationCredentials | None = Depends(bearer)
    ) -> Principal:
        challenge = {"WWW-Authenticate": "Bearer"}
        if creds is None:
            ctx.metrics.rejected.labels("auth").inc()
            raise HTTPException(401, "send an API key as 'Authorization: Bearer af_...'", headers=challenge)
        key = authenticate(ctx.engine, creds.credentials)
        if key is None:
            ctx.metrics.rejected.labels("auth").inc()
            raise HTTPException(401, "API key is unknown, expired or revoked", headers=challenge)
        if not key.allows(scope):
            ctx.metrics.rejected.labels("scope").inc()
            raise HTTPException(
                403, f"this API key lacks the '{scope}' scope (it has {', '.join(key.scopes)})"
            )
        limit = ctx.config.rate_limit(key.tenant)
        verdict = ctx.rate_limiter.hit(key.tenant, limit)
        if not verdict.allowed:
            ctx.metrics.rejected.labels("rate_limit").inc()
            raise too_many(f"rate limit of {limit} requests per minute exceeded", verdict.retry_after_s)
        return Principal(key.tenant, key.prefix, key.scopes)

    return dependency
