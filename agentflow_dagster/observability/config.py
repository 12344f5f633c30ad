"""Observability knobs, read from the environment (prefix AGENTFLOW_, OTEL_* where a standard name exists)."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ContentMode = Literal["redacted", "none"]


class ObservabilitySettings(BaseSettings):
    """What LLM content is kept, how it is redacted, and where large payloads go."""

    model_config = SettingsConfigDict(env_prefix="AGENTFLOW_", extra="ignore")

    # "redacted": prompts and responses are stored after redaction; "none": no content at all.
    llm_content_mode: ContentMode = "redacted"
    # name -> regex; replaces the default PII patterns (an empty object disables PII redaction).
    redact_pii_patterns: dict[str, str] | None = None
    # Extra secret patterns on top of the built-in ones (always applied).
    redact_secret_patterns: dict[str, str] = Field(default_factory=dict)
    # Prompts or responses larger than this (bytes, after redaction) go to the object store.
    llm_content_inline_limit: int = 16 * 1024
    capture_message_content: bool = Field(
        default=False,
        validation_alias=AliasChoices(
            "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "AGENTFLOW_CAPTURE_MESSAGE_CONTENT"
        ),
    )
