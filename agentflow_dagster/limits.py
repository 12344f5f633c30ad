"""Limits of a tenant (request rate, daily token budget) and of a workflow run (its max runtime).

The tenant limits are shared by the API gateway and the request sensor. The daily token budget is one
setting enforced at both doors: `AGENTFLOW_API_DAILY_TOKEN_BUDGET` and `AGENTFLOW_API_TENANT_LIMITS`
are read by `agentflow api` (429 at admission) and by the code location's workflow request sensor
(events produced straight to Kafka), so both processes need them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import redis as redis_lib
import sqlalchemy as sa
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from agentflow_dagster.workflows.spec import RetrySpec, TaskSpec, WorkflowSpec

# INCR and the expiry in one step, so a crash between them cannot leave a counter that never resets.
_WINDOW_LUA = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {n, redis.call('PTTL', KEYS[1])}
"""


class TenantLimits(BaseModel):
    """Per-tenant overrides of the default limits (None = use the default)."""

    requests_per_minute: int | None = Field(default=None, ge=1)
    daily_token_budget: int | None = Field(default=None, ge=0)


class TenantQuotas(BaseSettings):
    """Daily token budgets per tenant (prefix AGENTFLOW_API_, shared with the gateway's `ApiConfig`)."""

    model_config = SettingsConfigDict(env_prefix="AGENTFLOW_API_", extra="ignore")

    # LLM tokens (input + output, cache hits excluded) a tenant may spend per UTC day; 0 = unlimited.
    daily_token_budget: int = Field(default=0, ge=0)
    # JSON, e.g. AGENTFLOW_API_TENANT_LIMITS='{"acme": {"requests_per_minute": 60}}'.
    tenant_limits: dict[str, TenantLimits] = Field(default_factory=dict)
    # How long a token-usage sum read from Postgres is reused.
    usage_cache_s: float = Field(default=5.0, ge=0.0)

    def token_budget(self, tenant: str) -> int:
        """Tokens per UTC day allowed for `tenant` (0 = unlimited)."""
        override = self.tenant_limits.get(tenant)
        if override and override.daily_token_budget is not None:
            return override.daily_token_budget
        return self.daily_token_budget


@dataclass(frozen=True)
class Verdict:
    """Whether a request may go on; when not, how many seconds until it may."""

    allowed: bool
    used: int
    limit: int
    retry_after_s: int = 0


class RateLimiter:
    """Fixed one-minute windows per tenant (`agentflow:api:rate:<tenant>:<window>`)."""

    def __init__(self, client: redis_lib.Redis, window_s: int = 60):
        self.client = client
        self.window_s = window_s
        self._script = client.register_script(_WINDOW_LUA)

    def hit(self, tenant: str, limit: int) -> Verdict:
        """Count one request of `tenant` against `limit` per window."""
        window = int(time.time() // self.window_s)
        n, ttl_ms = self._script(keys=[f"agentflow:api:rate:{tenant}:{window}"], args=[self.window_s * 1000])
        n, ttl_ms = int(n), int(ttl_ms)
        if n <= limit:
            return Verdict(True, n, limit)
        wait = ttl_ms / 1000 if ttl_ms > 0 else (window + 1) * self.window_s - time.time()
        return Verdict(False, n, limit, max(1, math.ceil(wait)))


def _day_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


@dataclass
class TokenBudget:
    """Tokens a tenant's workflows spent today (from `llm_calls`), cached briefly in Redis.

    Without a Redis client the sums are cached in this object instead (the request sensor builds one
    per tick, so a tick reads each tenant's usage once).
    """

    client: redis_lib.Redis | None
    engine: sa.Engine
    cache_s: float = 5.0
    _local: dict[str, tuple[float, int]] = field(default_factory=dict, repr=False)

    def used_today(self, tenant: str, now: datetime | None = None) -> int:
        """Input + output tokens of today's non-cached LLM calls in this tenant's plans."""
        start = _day_start(now or datetime.now(UTC))
        key = f"agentflow:api:tokens:{tenant}:{start:%Y%m%d}"
        cached = self._cached(key)
        if cached is not None:
            return cached
        with self.engine.connect() as conn:
            used = int(
                conn.execute(
                    sa.text(
                        "SELECT COALESCE(SUM(COALESCE(c.input_tokens, 0) + COALESCE(c.output_tokens, 0)), 0)"
                        " FROM llm_calls c JOIN workflow_runs w ON w.plan_id = c.plan_id "
                        "WHERE w.tenant = :t AND c.created_at >= :start AND NOT c.cache_hit"
                    ),
                    {"t": tenant, "start": start},
                ).scalar_one()
            )
        if self.cache_s > 0:
            if self.client is not None:
                self.client.set(key, used, px=max(1, int(self.cache_s * 1000)))
            else:
                self._local[key] = (time.monotonic() + self.cache_s, used)
        return used

    def _cached(self, key: str) -> int | None:
        if self.cache_s <= 0:
            return None
        if self.client is not None:
            value = self.client.get(key)
            return None if value is None else int(value)  # type: ignore[arg-type]
        expires, used = self._local.get(key, (0.0, 0))
        return used if time.monotonic() < expires else None

    def check(self, tenant: str, budget: int, now: datetime | None = None) -> Verdict:
        """Allowed while today's usage is below `budget` (0 = unlimited); else wait for the next UTC day."""
        if budget <= 0:
            return Verdict(True, 0, 0)
        now = now or datetime.now(UTC)
        used = self.used_today(tenant, now)
        if used < budget:
            return Verdict(True, used, budget)
        wait = (_day_start(now) + timedelta(days=1) - now).total_seconds()
        return Verdict(False, used, budget, max(1, math.ceil(wait)))


# Run monitoring (dagster.yaml `run_monitoring`) fails a run tagged with this once it has been STARTED
# for longer than the value in seconds; the run-retry daemon then retries it from failure. The tag
# replaces the instance's `max_runtime_seconds` for that run.
MAX_RUNTIME_TAG = "dagster/max_runtime"
# Run worker and step process start-up, the approval-gate and history writes, a lock hand-over.
RUN_OVERHEAD_S = 300
RUN_MARGIN = 1.25


def retry_wait_bound_s(retry: RetrySpec, attempt: int) -> float:
    """The longest wait Dagster's RetryPolicy can make before retry number `attempt` (1-based)."""
    if retry.backoff == "exponential":
        wait = (2**attempt - 1) * retry.delay_s
    elif retry.backoff == "linear":
        wait = retry.delay_s * attempt
    else:
        wait = retry.delay_s
    return wait + (retry.delay_s if retry.jitter == "plus_minus" else 0.0)


def task_max_runtime_s(task: TaskSpec) -> float:
    """Every attempt running out its timeout (twice when a fallback agent follows), plus the waits."""
    attempts = 1 + task.retry.max_retries
    per_attempt = task.timeout_s * (2 if task.fallback_agent else 1)
    waits = sum(retry_wait_bound_s(task.retry, n) for n in range(1, attempts))
    copies = task.fan_out.max_items if task.fan_out else 1  # counted as if the copies ran one by one
    return copies * (attempts * per_attempt + waits)


def run_max_runtime_s(spec: WorkflowSpec) -> int:
    """The `dagster/max_runtime` of a run of `spec`: every task at its worst, one after the other, + margin.

    A bound for a run nobody will finish (its worker and code server gone), not a deadline: a run that
    merely runs slow never reaches it.
    """
    worst = sum(task_max_runtime_s(task) for task in spec.tasks)
    return math.ceil(worst * RUN_MARGIN + RUN_OVERHEAD_S)
