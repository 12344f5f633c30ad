"""Rate limits and daily token budgets per tenant, now in `agentflow_dagster.limits` (shared with sensors)."""

from agentflow_dagster.limits import RateLimiter, TenantLimits, TenantQuotas, TokenBudget, Verdict

__all__ = ["RateLimiter", "TenantLimits", "TenantQuotas", "TokenBudget", "Verdict"]
