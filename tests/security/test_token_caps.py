"""Unbounded consumption: tokens capped per call, per prompt and per workflow; input size checked."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from agentflow_dagster.agents.roles import get_agent
from agentflow_dagster.agents.runner import (
    AgentBudgetError,
    BudgetExceeded,
    build_messages,
    prompt_tokens,
    run_agent,
)
from agentflow_dagster.llm.openai_compat import BackoffPolicy, OpenAICompatProvider
from agentflow_dagster.observability.llm_records import ObservedCallRecorder
from agentflow_dagster.settings import get_settings
from ops.budget import WorkflowTokenBudget
from tests.support.llm_server import LLMTestServer

TOKENS_PER_CALL = 120  # what the LLM test server reports as usage


def _provider(server: LLMTestServer) -> OpenAICompatProvider:
    return OpenAICompatProvider(server.base_url, "", timeout_s=2.0, policy=BackoffPolicy(max_attempts=1))


def test_every_call_carries_its_completion_cap(llm_server: LLMTestServer) -> None:
    for agent in ("classifier", "writer"):
        run_agent(get_agent(agent), {"message": "hi"}, provider=_provider(llm_server), model="m")
    assert [r["max_tokens"] for r in llm_server.requests] == [1024, 4096]
    run_agent(
        get_agent("classifier"),
        {"message": "hi"},
        provider=_provider(llm_server),
        model="m",
        max_output_tokens=64,
    )
    assert llm_server.requests[-1]["max_tokens"] == 64


def test_an_oversized_prompt_is_refused_before_any_call(llm_server: LLMTestServer) -> None:
    role = get_agent("summarizer")
    document = "word " * (role.max_prompt_tokens + 100)  # one cl100k token per repeated word
    with pytest.raises(AgentBudgetError, match="exceeds its input cap") as info:
        run_agent(role, {"document": document}, provider=_provider(llm_server), model="m")
    assert llm_server.count() == 0 and not info.value.retryable


def test_the_workflow_budget_refuses_the_call_that_would_exceed_it(
    llm_server: LLMTestServer, engine: sa.Engine
) -> None:
    plan = f"plan-{uuid.uuid4().hex[:20]}"
    role, inputs = get_agent("classifier"), {"message": "my invoice was charged twice"}
    upcoming = prompt_tokens(build_messages(role, inputs, None)) + 64
    # Room for one call (worst case `upcoming`), not for a second after it spent TOKENS_PER_CALL.
    budget = WorkflowTokenBudget(engine, plan, cap=upcoming + TOKENS_PER_CALL - 1)
    recorder = ObservedCallRecorder(engine, plan, "classify", "run-1")
    kwargs = {"provider": _provider(llm_server), "model": "m", "recorder": recorder, "max_output_tokens": 64}
    run_agent(role, inputs, budget=budget, **kwargs)  # type: ignore[arg-type]
    assert budget.used() == TOKENS_PER_CALL

    # Rows of other plans and cache hits do not count against this plan.
    ObservedCallRecorder(engine, f"plan-{uuid.uuid4().hex[:20]}", "t", "r")(_attempt(10_000))
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO llm_calls (plan_id, task_id, provider, model, input_tokens, output_tokens, "
                "cache_hit) VALUES (:p, 'cached', 'x', 'm', 5000, 5000, true)"
            ),
            {"p": plan},
        )
    assert budget.used() == TOKENS_PER_CALL

    with pytest.raises(AgentBudgetError, match="workflow token budget exceeded") as info:
        run_agent(role, inputs, budget=budget, **kwargs)  # type: ignore[arg-type]
    assert llm_server.count() == 1  # refused before the request was sent
    assert not info.value.retryable and info.value.usage.calls == 0
    assert plan in str(info.value) and "AGENTFLOW_MAX_TOKENS_PER_WORKFLOW" in str(info.value)


def test_schema_re_asks_are_checked_against_the_budget_too(
    llm_server: LLMTestServer, engine: sa.Engine
) -> None:
    from tests.support import llm_server as script

    plan = f"plan-{uuid.uuid4().hex[:20]}"
    llm_server.rule(lambda body: True, script.bad_schema())
    role, inputs = get_agent("classifier"), {"message": "x"}
    upcoming = prompt_tokens(build_messages(role, inputs, None)) + 64
    budget = WorkflowTokenBudget(engine, plan, cap=upcoming + TOKENS_PER_CALL + 10)
    recorder = ObservedCallRecorder(engine, plan, "classify", "run-1")
    with pytest.raises(AgentBudgetError) as info:
        run_agent(
            role, inputs, provider=_provider(llm_server), model="m", recorder=recorder,
            budget=budget, max_output_tokens=64,
        )  # fmt: skip
    # Without the budget the role re-asks twice (3 calls); the budget stopped it after the first.
    assert llm_server.count() == 1 and info.value.usage.calls == 1


def test_the_cap_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, engine: sa.Engine) -> None:
    monkeypatch.setenv("AGENTFLOW_MAX_TOKENS_PER_WORKFLOW", "50")
    get_settings.cache_clear()
    try:
        budget = WorkflowTokenBudget(engine, f"plan-{uuid.uuid4().hex[:20]}")
        assert budget.cap == 50
        budget.check(50)
        with pytest.raises(BudgetExceeded):
            budget.check(51)
        monkeypatch.setenv("AGENTFLOW_MAX_TOKENS_PER_WORKFLOW", "0")  # 0 = no cap
        get_settings.cache_clear()
        WorkflowTokenBudget(engine, "p").check(10**9)
    finally:
        get_settings.cache_clear()


def _attempt(tokens: int):  # type: ignore[no-untyped-def]
    from agentflow_dagster.llm.types import CallAttempt

    return CallAttempt("x", "m", [], 1, 1.0, "{}", tokens, 0, "stop")
