"""Gateway configuration: environment variables with the prefix AGENTFLOW_API_."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class TenantLimits(BaseModel):
    """Per-tenant overrides of the default limits (None = use the default)."""

    requests_per_minute: int | None = Field(default=None, ge=1)
    daily_token_budget: int | None = Field(default=None, ge=0)


class ApiConfig(BaseSettings):
    """Limits and knobs of `agentflow api`; addresses of the servers come from `Settings`."""

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
    # LLM tokens (input + output, cache hits excluded) a tenant may spend per UTC day; 0 = unlimited.
    daily_token_budget: int = Field(default=0, ge=0)
    # JSON, e.g. AGENTFLOW_API_TENANT_LIMITS='{"acme": {"requests_per_minute": 60}}'.
    tenant_limits: dict[str, TenantLimits] = Field(default_factory=dict)
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=60)
    # How long a token-usage sum read from Postgres is reused from Redis.
    usage_cache_s: float = Field(default=5.0, ge=0.0)
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

    def token_budget(self, tenant: str) -> int:
        """Tokens per UTC day allowed for `tenant` (0 = unlimited)."""
        override = self.tenant_limits.get(tenant)
        if override and override.daily_token_budget is not None:
            return override.daily_token_budget
        return self.daily_token_budget
