"""Per-tenant request rate limits and daily token budgets, kept in Redis."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis as redis_lib
import sqlalchemy as sa

# INCR and the expiry in one step, so a crash between them cannot leave a counter that never resets.
_WINDOW_LUA = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {n, redis.call('PTTL', KEYS[1])}
"""


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


class TokenBudget:
    """Tokens a tenant's workflows spent today (from `llm_calls`), cached briefly in Redis."""

    def __init__(self, client: redis_lib.Redis, engine: sa.Engine, cache_s: float = 5.0):
        self.client = client
        self.engine = engine
        self.cache_s = cache_s

    def used_today(self, tenant: str, now: datetime | None = None) -> int:
        """Input + output tokens of today's non-cached LLM calls in this tenant's plans."""
        start = _day_start(now or datetime.now(UTC))
        key = f"agentflow:api:tokens:{tenant}:{start:%Y%m%d}"
        cached = self.client.get(key) if self.cache_s > 0 else None
        if cached is not None:
            return int(cached)  # type: ignore[arg-type]
        with self.engine.connect() as conn:
            used = conn.execute(
                sa.text(
                    "SELECT COALESCE(SUM(COALESCE(c.input_tokens, 0) + COALESCE(c.output_tokens, 0)), 0) "
                    "FROM llm_calls c JOIN workflow_runs w ON w.plan_id = c.plan_id "
                    "WHERE w.tenant = :t AND c.created_at >= :start AND NOT c.cache_hit"
                ),
                {"t": tenant, "start": start},
            ).scalar_one()
        if self.cache_s > 0:
            self.client.set(key, int(used), px=max(1, int(self.cache_s * 1000)))
        return int(used)

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
