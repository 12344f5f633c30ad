"""Gateway configuration: environment variables with the prefix AGENTFLOW_API_."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from agentflow_dagster.limits import TenantLimits, TenantQuotas

__all__ = ["ApiConfig", "TenantLimits"]


class ApiConfig(TenantQuotas):
    """Limits and knobs of `agentflow api`; addresses of the servers come from `Settings`.

    The daily token budget fields (`daily_token_budget`, `tenant_limits`, `usage_cache_s`) come from
    `TenantQuotas`: the request sensor reads the same variables.
    """

    model_config = SettingsConfigDict(env_prefix="AGENTFLOW_API_", extra="ignore")

    # Spans to the observability exporter; `agentflow api` turns it on, tests and embedders opt in.
    tracing: bool = False
    # "kafka" publishes to agentflow.workflow.requests; "direct" launches through Dagster's GraphQL API.
    launch: Literal["kafka", "direct"] = "kafka"
    dagster_graphql_url: str = "http://127.0.0.1:3000"
    dagster_location: str = "agentflow"
    dagster_repository: str = "__repository__"
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    max_document_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    requests_per_minute: int = Field(default=600, ge=1)
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=60)
    kafka_timeout_s: float = Field(default=10.0, gt=0.0)
    sse_poll_s: float = Field(default=1.0, gt=0.0)
    sse_max_s: float = Field(default=600.0, gt=0.0)
    # Load the embedding model in the background at startup, so the first search is not slow.
    preload_retriever: bool = True
    search_max_k: int = Field(default=20, ge=1, le=100)
    # Collections every tenant may search (e.g. a product manual loaded by an operator).
    shared_collections: list[str] = Field(default_factory=list)

    def rate_limit(self, tenant: str) -> int:
        """Requests per minute allowed for `tenant`."""
        override = self.tenant_limits.get(tenant)
        return (
            override.requests_per_minute
            if override and override.requests_per_minute
            else self.requests_per_minute
        )
