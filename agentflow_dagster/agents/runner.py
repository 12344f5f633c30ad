"""Run one agent: retrieve (if allowed), prompt, call the LLM, validate, re-ask with the error if invalid."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from agentflow_dagster.agents.roles import AgentRole
from agentflow_dagster.agents.tools import RETRIEVAL, RetrievalResult, Retriever, retrieve
from agentflow_dagster.llm.types import ChatProvider, ChatRequest, LLMError, Recorder, extract_json

_MESSAGE_ROLES = {"system": "system", "human": "user", "ai": "assistant"}


@dataclass
class Usage:
    """Tokens, cost and LLM calls spent by an agent, including failed answers."""

    calls: int = 0
    attempts: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0


@dataclass
class AgentRun:
    """A validated agent output and what producing it took."""

    agent: str
    output: dict[str, Any]
    provider: str
    model: str
    usage: Usage
    schema_retries: int = 0
    retrieval: RetrievalResult | None = None
    waits: list[float] = field(default_factory=list)


class AgentError(RuntimeError):
    """The agent produced no valid output (LLM failure or schema failures exhausted)."""

    def __init__(self, message: str, agent: str, usage: Usage, retryable: bool = True):
        super().__init__(message)
        self.agent, self.usage, self.retryable = agent, usage, retryable


def render_untrusted(result: RetrievalResult | None) -> str:
    """Delimit retrieved passages so the model can tell data from instructions."""
    if result is None:
        return "(this agent does not retrieve)"
    if not result.hits:
        return f"(none: {result.note})"
    blocks = []
    for hit in result.hits:
        # Escaping keeps a passage from closing its own tag and smuggling text outside the block.
        body = html.escape(hit.text, quote=False)
        attrs = f'id="{html.escape(hit.id)}" source="{html.escape(hit.source)}"'
        blocks.append(f"<untrusted_document {attrs}>\n{body}\n</untrusted_document>")
    return "\n".join(blocks)


def build_messages(
    role: AgentRole, inputs: dict[str, Any], retrieval: RetrievalResult | None
) -> list[dict[str, str]]:
    """The role's prompt rendered for these inputs, as OpenAI chat messages."""
    rendered = role.prompt.format_messages(
        inputs=json.dumps(inputs, indent=2, ensure_ascii=False, default=str),
        retrieved=render_untrusted(retrieval),
        schema=json.dumps(role.output.model_json_schema()),
    )
    return [{"role": _MESSAGE_ROLES.get(m.type, "user"), "content": str(m.content)} for m in rendered]


def _short_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()[:8]
        )
    return str(exc)[:500]


def run_agent(
    role: AgentRole,
    inputs: dict[str, Any],
    *,
    provider: ChatProvider,
    model: str,
    retriever: Retriever | None = None,
    retrieval_request: tuple[str, str, int] | None = None,
    recorder: Recorder | None = None,
    deadline: float | None = None,
) -> AgentRun:
    """Produce `role.output` for `inputs`; a schema failure is re-asked `role.max_schema_retries` times."""
    retrieval = None
    if retrieval_request is not None:
        if RETRIEVAL not in role.tools:
            raise AgentError(
                f"agent {role.name!r} may not use retrieval", role.name, Usage(), retryable=False
            )
        query, collection, k = retrieval_request
        retrieval = retrieve(retriever, query, collection, k)
    messages = build_messages(role, inputs, retrieval)
    schema = role.output.model_json_schema()
    grounding = {"inputs": inputs, "retrieved": [h.model_dump() for h in retrieval.hits] if retrieval else []}
    usage = Usage()
    waits: list[float] = []
    last_error = ""
    for round_ in range(role.max_schema_retries + 1):
        request = ChatRequest(messages, model, schema, role.output.__name__, grounding, deadline=deadline)
        try:
            result = provider.chat(request, recorder)
        except LLMError as exc:
            usage.attempts += exc.attempts
            raise AgentError(f"agent {role.name!r}: {exc}", role.name, usage, exc.retryable) from exc
        usage.calls += 1
        usage.attempts += result.attempts
        usage.input_tokens += result.input_tokens
        usage.output_tokens += result.output_tokens
        usage.cost_usd += result.cost_usd
        usage.latency_ms += result.latency_ms
        waits.extend(result.waits)
        try:
            output = role.output.model_validate(extract_json(result.content))
        except ValueError as exc:  # pydantic's ValidationError is a ValueError too
            last_error = _short_error(exc)
            messages = [
                *messages,
                {"role": "assistant", "content": result.content},
                {
                    "role": "user",
                    "content": f"Your answer did not validate against the schema: {last_error}. "
                    "Reply again with only a corrected JSON object.",
                },
            ]
            continue
        return AgentRun(
            role.name,
            output.model_dump(mode="json"),
            result.provider,
            result.model,
            usage,
            round_,
            retrieval,
            waits,
        )
    raise AgentError(
        f"agent {role.name!r}: output failed its schema {role.max_schema_retries + 1} times; "
        f"last error: {last_error}",
        role.name,
        usage,
    )
