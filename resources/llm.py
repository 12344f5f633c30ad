"""LLM: an OpenAI-compatible endpoint when `base_url` is set, else the labelled offline provider."""

from __future__ import annotations

from typing import Literal

import dagster as dg
from pydantic import Field, PrivateAttr

from agentflow_dagster.llm.offline import OfflineExtractiveProvider
from agentflow_dagster.llm.openai_compat import BackoffPolicy, OpenAICompatProvider
from agentflow_dagster.llm.types import OFFLINE_MODEL, OFFLINE_PROVIDER, ChatProvider

DEFAULT_MODELS = {"default": "gpt-4o-mini", "fast": "gpt-4o-mini", "reasoning": "gpt-4o"}


class LLMResource(dg.ConfigurableResource):
    """Chat provider factory; models are chosen per agent profile (default, fast, reasoning, ...)."""

    base_url: str = Field(default="", description="OpenAI-compatible endpoint; empty = offline-extractive")
    api_key: str = Field(default="", description="secret: pass dg.EnvVar('OPENAI_API_KEY')")
    models: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_MODELS))
    timeout_s: float = 60.0
    max_attempts: int = Field(default=4, ge=1, le=20)
    max_total_wait_s: float = Field(default=60.0, ge=0.0)
    backoff_base_s: float = Field(default=0.5, ge=0.0)
    backoff_max_s: float = Field(default=20.0, ge=0.0)
    response_format: Literal["json_schema", "json_object", "none"] = "json_schema"
    prices: dict[str, list[float]] = Field(
        default_factory=dict,
        description="model prefix -> [USD per 1M input tokens, USD per 1M output tokens]",
    )

    _provider: ChatProvider | None = PrivateAttr(default=None)

    @property
    def offline(self) -> bool:
        return not self.base_url

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
            self.base_url, self.api_key, self.timeout_s, policy, self.response_format, self.prices
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
        """The model serving an agent profile (the `default` model when the profile is not mapped)."""
        if self.offline:
            return OFFLINE_MODEL
        return self.models.get(profile) or self.models.get("default") or DEFAULT_MODELS["default"]
