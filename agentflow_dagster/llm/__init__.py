"""LLM access: an OpenAI-compatible provider with bounded retries, and the offline extractive default."""

from agentflow_dagster.llm.types import (
    OFFLINE_PROVIDER,
    CallAttempt,
    ChatProvider,
    ChatRequest,
    ChatResult,
    LLMError,
    LLMExhaustedError,
)

__all__ = [
    "OFFLINE_PROVIDER",
    "CallAttempt",
    "ChatProvider",
    "ChatRequest",
    "ChatResult",
    "LLMError",
    "LLMExhaustedError",
]
