"""Per-workflow token budget: what a plan's LLM calls spent so far (`llm_calls`), checked before each call."""

from __future__ import annotations

import sqlalchemy as sa

from agentflow_dagster.agents.runner import BudgetExceeded
from agentflow_dagster.settings import get_settings

_USED = sa.text(
    "SELECT COALESCE(SUM(COALESCE(input_tokens, 0) + COALESCE(output_tokens, 0)), 0) "
    "FROM llm_calls WHERE plan_id = :plan_id AND NOT cache_hit"
)


class WorkflowTokenBudget:
    """A `TokenBudget` for one plan: refuses a call when spent + the call's worst case exceeds `cap`.

    Every attempt of every task of the plan counts (failed attempts, Dagster retries and re-executions
    too), since they all write `llm_calls` rows under the plan id. Tasks running at the same time each
    see the others' finished calls only, so a fan-out can overshoot by at most one call per branch.
    """

    def __init__(self, engine: sa.Engine, plan_id: str, cap: int | None = None, used: int | None = None):
        """`used`: what the plan had spent when the task's opening transaction read it (`read_used`), the
        figure of the first check; every later check reads the table again."""
        self.engine, self.plan_id = engine, plan_id
        self.cap = _cap(cap)
        self._prefetched = used

    def used(self) -> int:
        """Input + output tokens of the plan's non-cached LLM calls."""
        if self._prefetched is not None:
            used, self._prefetched = self._prefetched, None
            return used
        with self.engine.connect() as conn:
            return read_used(conn, self.plan_id)

    def check(self, upcoming_tokens: int = 0) -> None:
        """Raise `BudgetExceeded` when `upcoming_tokens` more would take the plan over its cap (0 = none)."""
        if self.cap <= 0:
            return
        used = self.used()
        if used + upcoming_tokens > self.cap:
            raise BudgetExceeded(
                f"workflow token budget exceeded: plan {self.plan_id} has used {used} of its {self.cap} "
                f"tokens and the next call may take up to {upcoming_tokens}; raise "
                "AGENTFLOW_MAX_TOKENS_PER_WORKFLOW (0 = no cap) or shorten the inputs"
            )


def _cap(cap: int | None) -> int:
    """The token cap per workflow: `cap`, else AGENTFLOW_MAX_TOKENS_PER_WORKFLOW (0 = no cap)."""
    return get_settings().max_tokens_per_workflow if cap is None else cap


def read_used(conn: sa.Connection, plan_id: str) -> int:
    """The plan's spent tokens, read on the caller's connection (inside its transaction)."""
    return int(conn.execute(_USED, {"plan_id": plan_id}).scalar_one())


def read_used_if_capped(conn: sa.Connection, plan_id: str, cap: int | None = None) -> int | None:
    """`read_used` for a budget's first check (`WorkflowTokenBudget(used=...)`); None when there is no
    cap, as such a budget never reads it."""
    return read_used(conn, plan_id) if _cap(cap) > 0 else None
