"""The offline extractive provider: valid against every agent schema, deterministic, labelled."""

from __future__ import annotations

import json

import pytest

from agentflow_dagster.agents.roles import AGENTS
from agentflow_dagster.llm.offline import OfflineExtractiveProvider, compose
from agentflow_dagster.llm.types import OFFLINE_PROVIDER, CallAttempt, ChatRequest
from resources.llm import LLMResource

GROUNDING = {
    "inputs": {"message": "My login fails with an error since the update. This is urgent."},
    "retrieved": [
        {"id": "kb-7", "text": "Reset the password from the sign-in page. Clear the app cache after updates."}
    ],
}


@pytest.mark.parametrize("agent", sorted(AGENTS))
def test_answers_validate_against_every_agent_schema(agent: str) -> None:
    role = AGENTS[agent]
    role.output.model_validate(compose(role.output.model_json_schema(), GROUNDING))


def test_deterministic_extractive_and_labelled() -> None:
    provider = OfflineExtractiveProvider()
    records: list[CallAttempt] = []
    schema = AGENTS["drafter"].output.model_json_schema()
    first = provider.chat(
        ChatRequest([{"role": "user", "content": "x"}], "ignored", schema, grounding=GROUNDING),
        records.append,
    )
    second = provider.chat(
        ChatRequest([{"role": "user", "content": "x"}], "ignored", schema, grounding=GROUNDING)
    )
    assert first.content == second.content
    draft = json.loads(first.content)
    assert draft["citations"] == ["kb-7"] and "Reset the password" in draft["reply"]
    assert (
        first.provider == OFFLINE_PROVIDER and records[0].provider == OFFLINE_PROVIDER and first.cost_usd == 0
    )


def test_classifier_keywords() -> None:
    out = compose(AGENTS["classifier"].output.model_json_schema(), GROUNDING)
    assert out["category"] in ("technical", "account") and out["urgency"] == "high"


def test_offline_only_without_endpoint() -> None:
    assert LLMResource().provider_name == OFFLINE_PROVIDER
    configured = LLMResource(base_url="http://127.0.0.1:9/v1")
    assert configured.provider_name != OFFLINE_PROVIDER and configured.model_for("fast") == "gpt-4o-mini"
