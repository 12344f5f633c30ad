"""LLM: an OpenAI-compatible endpoint when a base URL or an API key is set, else the offline provider.

OPENAI_API_KEY alone means api.openai.com; OPENAI_BASE_URL points at any OpenAI-compatible server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import dagster as dg
from pydantic import Field, PrivateAttr

from agentflow_dagster.clients import OPENAI_URL as OPENAI_URL
from agentflow_dagster.clients import llm_endpoint
from agentflow_dagster.llm.offline import OfflineExtractiveProvider
from agentflow_dagster.llm.openai_compat import BackoffPolicy, OpenAICompatProvider
from agentflow_dagster.llm.types import OFFLINE_MODEL, OFFLINE_PROVIDER, ChatProvider

if TYPE_CHECKING:
    from agentflow_dagster.agents.roles import AgentRole

DEFAULT_MODELS = {"default": "gpt-4o-mini", "fast": "gpt-4o-mini", "reasoning": "gpt-4o"}


class LLMResource(dg.ConfigurableResource):
    """Chat provider factory; models are chosen per agent profile (default, fast, reasoning, ...)."""

    base_url: str = Field(
        default="", description="OpenAI-compatible endpoint; empty: api.openai.com with a key, else offline"
    )
    api_key: str = Field(default="", description="secret: pass dg.EnvVar('OPENAI_API_KEY')")
    models: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_MODELS))
    # The project's default model (agentflow.yaml `model`) and AGENTFLOW_MODEL, which overrides every
    # profile (a one-model deployment) but not an agent's own `model.name`.
    default_model: str = ""
    model_override: str = ""
    timeout_s: float = 60.0
    max_attempts: int = Field(default=4, ge=1, le=20)
    max_total_wait_s: float = Field(default=60.0, ge=0.0)
    backoff_base_s: float = Field(default=0.5, ge=0.0)
    backoff_max_s: float = Field(default=20.0, ge=0.0)
    response_format: Literal["json_schema", "json_object", "json_object_schema", "none"] = "json_schema"
    prices: dict[str, list[float]] = Field(
        default_factory=dict,
        description="model prefix -> [USD per 1M input tokens, USD per 1M output tokens]",
    )

    _provider: ChatProvider | None = PrivateAttr(default=None)

    @property
    def offline(self) -> bool:
        return not self.endpoint

    @property
    def endpoint(self) -> str:
        """The endpoint calls go to ('' when offline)."""
        return llm_endpoint(self.base_url, self.api_key)

    def build_provider(self) -> ChatProvider:
        """The endpoint's provider; the offline provider only when no endpoint is configured."""
        if self.offline:
            return OfflineExtractiveProvider()
        policy = BackoffPolicy(
            max_attempts=self.max_attempts,
            max_total_wait_s=self.max_total_wait_s,
            base_delay_s=self.backoff_base_s,
            max_delay_s=self.backoff_max_s,
        )
        return OpenAICompatProvider(
            self.endpoint, self.api_key, self.timeout_s, policy, self.response_format, self.prices
        )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._provider = self.build_provider()

    @property
    def provider(self) -> ChatProvider:
        if self._provider is None:
            self._provider = self.build_provider()
        return self._provider

    @property
    def provider_name(self) -> str:
        return OFFLINE_PROVIDER if self.offline else self.provider.name

    def model_for(self, profile: str) -> str:
        """The model serving an agent profile: AGENTFLOW_MODEL, the profile's, the project default's."""
        if self.offline:
            return OFFLINE_MODEL
        return (
            self.model_override
            or self.models.get(profile)
            or self.default_model
            or self.models.get("default")
            or DEFAULT_MODELS["default"]
        )

    def model_for_role(self, role: AgentRole) -> str:
        """The model an agent uses: its own `model.name`, else its profile's."""
        if self.offline:
            return OFFLINE_MODEL
        return role.model or self.model_for(role.profile)
