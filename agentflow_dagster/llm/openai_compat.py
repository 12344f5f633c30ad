"""The `openai` client against any OpenAI-compatible endpoint, with retries whose bounds are ours."""

from __future__ import annotations

import email.utils
import functools
import json
import random
import ssl
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import httpx
import httpx2
import openai

from agentflow_dagster.llm.pricing import cost_usd
from agentflow_dagster.llm.types import (
    CallAttempt,
    ChatRequest,
    ChatResult,
    LLMError,
    LLMExhaustedError,
    Recorder,
    ToolCall,
    estimate_tokens,
    extract_json,
)


@dataclass(frozen=True)
class BackoffPolicy:
    """Attempt and wait bounds: exponential backoff with +/- jitter, Retry-After honoured on 429."""

    max_attempts: int = 4
    max_total_wait_s: float = 60.0
    base_delay_s: float = 0.5
    max_delay_s: float = 20.0
    jitter: float = 0.25

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Wait before attempt `attempt + 1`."""
        base = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
        return max(0.0, base * (1 + rng.uniform(-self.jitter, self.jitter)))


def retry_after_seconds(headers: Mapping[str, str] | httpx.Headers | None) -> float | None:
    """Seconds from `retry-after-ms` or `Retry-After` (delta-seconds or HTTP date), if present."""
    if not headers:
        return None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return None if parsed is None else max(0.0, parsed.timestamp() - time.time())


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None, response: str | None = None):
        super().__init__(message)
        self.retry_after = retry_after
        self.response = response


# gen_ai.provider.name well-known values (OpenTelemetry GenAI conventions) by API host.
_PROVIDER_BY_HOST = {
    "api.openai.com": "openai",
    "api.groq.com": "groq",
    "api.deepseek.com": "deepseek",
    "api.mistral.ai": "mistral_ai",
    "api.x.ai": "x_ai",
    "api.perplexity.ai": "perplexity",
}


def provider_label(base_url: str) -> str:
    """The gen_ai.provider.name for an endpoint: a known host's name, else `openai` (the API spoken).

    The host itself is reported as `server.address`, never folded into the provider name.
    """
    host = urlparse(base_url).hostname or base_url
    if host.endswith(".openai.azure.com"):
        return "azure.ai.openai"
    return _PROVIDER_BY_HOST.get(host, "openai")


# The openai client (3.x) runs on httpx2: its hooks and streams are httpx2 types.
_STARTED = "agentflow_started"


class _DeadlineStream(httpx2.SyncByteStream):
    """A response body that raises ReadTimeout once the attempt's whole time is spent."""

    def __init__(self, inner: Any, deadline: float, request: httpx2.Request):
        self._inner, self._deadline, self._request = inner, deadline, request

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            if time.monotonic() > self._deadline:
                raise httpx2.ReadTimeout(
                    "response body still arriving at the attempt timeout", request=self._request
                )
            yield chunk

    def close(self) -> None:
        self._inner.close()


@functools.lru_cache(maxsize=1)
def shared_ssl_context() -> ssl.SSLContext:
    """httpx's default TLS context (CA bundle, SSL_CERT_FILE/DIR from the environment), built once.

    Each new client would otherwise load the CA bundle again (~19 ms of CPU here); one context serves
    every client of the process (and, built in the warm launcher's forkserver, every run worker).
    """
    return httpx2.create_ssl_context()


def _stamp_start(request: httpx2.Request) -> None:
    request.extensions[_STARTED] = time.monotonic()


def _bound_body(response: httpx2.Response) -> None:
    """httpx's read timeout is per read: a body trickling a byte at a time would never end the attempt."""
    limit = (response.request.extensions.get("timeout") or {}).get("read")
    started = response.request.extensions.get(_STARTED)
    if limit is not None and started is not None:
        response.stream = _DeadlineStream(response.stream, started + limit, response.request)


class OpenAICompatProvider:
    """Chat completions through `openai.OpenAI(max_retries=0)`: every retry is decided and recorded here."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        timeout_s: float = 60.0,
        policy: BackoffPolicy | None = None,
        response_format: str = "json_schema",
        prices: Mapping[str, Sequence[float]] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
        provider_name: str = "",
    ):
        self.base_url = base_url
        self.name = provider_name or provider_label(base_url)
        self.server_address = urlparse(base_url).hostname
        self.timeout_s = timeout_s
        self.policy = policy or BackoffPolicy()
        self.response_format = response_format
        self.prices = prices
        self._sleep = sleep
        # Retry jitter, not security (bandit B311 is a false positive here).
        self._rng = random.Random(seed)  # noqa: S311  # nosec B311
        # Local servers ignore the key, but the client insists on one.
        self.client = openai.OpenAI(
            base_url=base_url,
            api_key=api_key or "unused",
            max_retries=0,
            timeout=timeout_s,
            http_client=openai.DefaultHttpxClient(
                verify=shared_ssl_context(),
                event_hooks={"request": [_stamp_start], "response": [_bound_body]},
            ),
        )

    def _format(self, request: ChatRequest) -> dict[str, Any] | None:
        if request.json_schema is None or self.response_format == "none":
            return None
        if self.response_format == "json_object":
            return {"type": "json_object"}
        if self.response_format == "json_object_schema":
            # llama.cpp servers constrain decoding with an inline schema (no `json_schema` type).
            return {"type": "json_object", "schema": request.json_schema}
        return {
            "type": "json_schema",
            "json_schema": {"name": request.schema_name, "schema": request.json_schema, "strict": False},
        }

    def _attempt(
        self, request: ChatRequest, timeout: float
    ) -> tuple[str, int, int, str, str, list[ToolCall]]:
        kwargs: dict[str, Any] = {"model": request.model, "messages": request.messages, "timeout": timeout}
        kwargs["temperature"] = request.temperature
        if request.max_tokens:
            kwargs["max_tokens"] = request.max_tokens
        if (fmt := self._format(request)) is not None:
            kwargs["response_format"] = fmt
        if request.tools:
            # OpenAI's default with tools; llama-cpp-python offers no tools unless it is sent.
            kwargs["tools"], kwargs["tool_choice"] = request.tools, request.tool_choice
        try:
            resp = self.client.chat.completions.create(**kwargs)
        except openai.RateLimitError as exc:
            raise _Retryable(
                f"429 rate limited: {exc.message}", retry_after_seconds(exc.response.headers)
            ) from exc
        except openai.APIStatusError as exc:
            if exc.status_code >= 500 or exc.status_code in (408, 409):
                raise _Retryable(
                    f"{exc.status_code} server error: {exc.message}",
                    retry_after_seconds(exc.response.headers),
                ) from exc
            raise LLMError(
                f"{exc.status_code} rejected by {self.name}: {exc.message}", retryable=False
            ) from exc
        except openai.APITimeoutError as exc:
            raise _Retryable(f"timed out after {timeout:.1f}s") from exc
        except openai.APIConnectionError as exc:
            raise _Retryable(f"connection to {self.base_url} failed: {exc}") from exc
        except (openai.APIResponseValidationError, json.JSONDecodeError, ValueError) as exc:
            raise _Retryable(f"invalid response body: {exc}") from exc
        if not getattr(resp, "choices", None):
            raise _Retryable(f"response without choices: {str(resp)[:200]}")
        choice = resp.choices[0]
        content = choice.message.content or ""
        finish = choice.finish_reason or "unknown"
        usage = resp.usage
        tokens_in = usage.prompt_tokens if usage else estimate_tokens(json.dumps(request.messages))
        calls = [
            ToolCall(c.id, c.function.name, c.function.arguments or "")
            for c in choice.message.tool_calls or []
            if getattr(c, "function", None) is not None  # custom (non-function) tools are never offered
        ]
        tokens_out = usage.completion_tokens if usage else estimate_tokens(content)
        return content, tokens_in, tokens_out, finish, resp.model or request.model, calls

    def chat(self, request: ChatRequest, recorder: Recorder | None = None) -> ChatResult:
        """Complete `request`, retrying 429/5xx/timeouts/invalid JSON within the policy's bounds."""
        waited: list[float] = []
        last_error = "no attempt made"
        for attempt in range(1, self.policy.max_attempts + 1):
            timeout = self.timeout_s
            if request.deadline is not None:
                timeout = min(timeout, request.deadline - time.monotonic())
                if timeout <= 0.05:
                    raise LLMExhaustedError(
                        f"task deadline reached after {attempt - 1} attempts; last error: {last_error}",
                        waits=waited,
                        attempts=attempt - 1,
                    )
            started = time.monotonic()
            record = CallAttempt(self.name, request.model, request.messages, attempt, 0.0)
            record.server_address = self.server_address
            retry_after: float | None = None
            try:
                content, tokens_in, tokens_out, finish, model, calls = self._attempt(request, timeout)
                record.response, record.finish_reason, record.model = content, finish, model
                if calls and not content:  # llm_calls shows what the model asked for
                    record.response = json.dumps({"tool_calls": [c.message_part() for c in calls]})
                record.input_tokens, record.output_tokens = tokens_in, tokens_out
                record.cost_usd = cost_usd(model, tokens_in, tokens_out, self.prices, self.name)
                if request.json_schema is not None and not calls:
                    try:
                        if not isinstance(extract_json(content), dict):
                            raise ValueError("the answer is JSON but not an object")
                    except ValueError as exc:
                        raise _Retryable(f"invalid JSON in answer (finish_reason={finish}): {exc}") from exc
            except _Retryable as exc:
                last_error, retry_after = str(exc), exc.retry_after
                record.error = last_error
            except LLMError as exc:
                record.error = str(exc)
                record.latency_ms = (time.monotonic() - started) * 1000
                if recorder:
                    recorder(record)
                exc.waits, exc.attempts = waited, attempt
                raise
            record.latency_ms = (time.monotonic() - started) * 1000
            if recorder:
                recorder(record)
            if record.error is None:
                return ChatResult(
                    content=content,
                    input_tokens=record.input_tokens,
                    output_tokens=record.output_tokens,
                    finish_reason=record.finish_reason or "unknown",
                    latency_ms=record.latency_ms,
                    model=record.model,
                    provider=self.name,
                    attempts=attempt,
                    cost_usd=record.cost_usd,
                    waits=waited,
                    tool_calls=calls,
                )
            if attempt == self.policy.max_attempts:
                break
            wait = retry_after if retry_after is not None else self.policy.delay(attempt, self._rng)
            budget = self.policy.max_total_wait_s - sum(waited)
            if request.deadline is not None:
                budget = min(budget, request.deadline - time.monotonic())
            if wait > budget:
                raise LLMExhaustedError(
                    f"giving up after {attempt} attempts: next wait {wait:.2f}s exceeds the remaining wait "
                    f"budget {max(budget, 0):.2f}s; last error: {last_error}",
                    waits=waited,
                    attempts=attempt,
                )
            waited.append(wait)
            self._sleep(wait)
        raise LLMExhaustedError(
            f"{self.policy.max_attempts} attempts failed; last error: {last_error}",
            waits=waited,
            attempts=self.policy.max_attempts,
        )
