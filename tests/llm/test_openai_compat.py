"""The OpenAI-compatible provider against a scripted loopback server: retries, backoff, bounds, records."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agentflow_dagster.agents.schemas import Plan
from agentflow_dagster.llm.openai_compat import BackoffPolicy, OpenAICompatProvider, retry_after_seconds
from agentflow_dagster.llm.types import CallAttempt, ChatRequest, LLMError, LLMExhaustedError
from tests.support import llm_server as script
from tests.support.llm_server import LLMTestServer


@pytest.fixture
def server() -> Iterator[LLMTestServer]:
    with LLMTestServer() as srv:
        yield srv


def _provider(server: LLMTestServer, sleeps: list[float], **policy: float) -> OpenAICompatProvider:
    # Sleeps are recorded instead of slept: the planned waits are what the policy decides.
    bounds = {"max_attempts": 4, "max_total_wait_s": 30.0, "base_delay_s": 0.5, "jitter": 0.25, **policy}
    return OpenAICompatProvider(
        server.base_url,
        "test-key",
        timeout_s=0.5,
        policy=BackoffPolicy(**bounds),
        sleep=sleeps.append,
        seed=7,
    )


def _request() -> ChatRequest:
    return ChatRequest(
        [{"role": "user", "content": "plan it"}], "test-model", Plan.model_json_schema(), "Plan"
    )


def test_normal_answer(server: LLMTestServer) -> None:
    sleeps: list[float] = []
    records: list[CallAttempt] = []
    result = _provider(server, sleeps).chat(_request(), records.append)
    Plan.model_validate_json(result.content)
    assert (result.attempts, result.input_tokens, result.output_tokens) == (1, 100, 20)
    assert result.finish_reason == "stop" and result.model == "test-model"
    assert result.provider == "openai" and records[0].server_address == "127.0.0.1"
    assert sleeps == [] and server.count() == 1 and len(records) == 1
    assert server.requests[0]["response_format"]["type"] == "json_schema"


def test_429_honours_retry_after(server: LLMTestServer) -> None:
    sleeps: list[float] = []
    server.script(script.rate_limited(3))
    result = _provider(server, sleeps).chat(_request())
    assert result.attempts == 2 and sleeps == [3.0] and result.waits == [3.0]
    assert server.count() == 2


def test_5xx_backs_off_exponentially_with_jitter(server: LLMTestServer) -> None:
    sleeps: list[float] = []
    server.script(script.server_error(500), script.server_error(503), script.server_error(502))
    result = _provider(server, sleeps).chat(_request())
    assert result.attempts == 4 and server.count() == 4
    for i, wait in enumerate(sleeps):
        base = 0.5 * 2**i
        assert base * 0.75 <= wait <= base * 1.25
    assert len(set(sleeps)) == 3


@pytest.mark.parametrize(
    "action",
    [script.slow(3.0), script.invalid_json(), script.truncated(), script.broken_body()],
    ids=["timeout", "invalid_json", "truncated", "broken_body"],
)
def test_retryable_failures_are_retried(server: LLMTestServer, action: script.Action) -> None:
    sleeps: list[float] = []
    records: list[CallAttempt] = []
    server.script(action)
    result = _provider(server, sleeps).chat(_request(), records.append)
    assert result.attempts == 2 and len(sleeps) == 1 and server.count() == 2
    assert records[0].error and records[1].error is None
    if action.kind == "truncated":
        assert records[0].finish_reason == "length"


def test_attempts_are_bounded(server: LLMTestServer) -> None:
    sleeps: list[float] = []
    records: list[CallAttempt] = []
    server.rule(lambda body: True, script.server_error(500))
    with pytest.raises(LLMExhaustedError, match="3 attempts failed") as info:
        _provider(server, sleeps, max_attempts=3).chat(_request(), records.append)
    # The openai client's own retries are off: the server saw exactly our attempts.
    assert server.count() == 3 and len(records) == 3 and len(sleeps) == 2
    assert info.value.attempts == 3 and all("500" in (r.error or "") for r in records)


def test_total_wait_is_bounded(server: LLMTestServer) -> None:
    sleeps: list[float] = []
    server.script(script.rate_limited(120))
    with pytest.raises(LLMExhaustedError, match="exceeds the remaining wait budget"):
        _provider(server, sleeps, max_total_wait_s=10.0).chat(_request())
    assert sleeps == [] and server.count() == 1


def test_client_errors_are_not_retried(server: LLMTestServer) -> None:
    sleeps: list[float] = []
    server.script(script.server_error(400))
    with pytest.raises(LLMError) as info:
        _provider(server, sleeps).chat(_request())
    assert not info.value.retryable and not isinstance(info.value, LLMExhaustedError)
    assert server.count() == 1 and sleeps == []


def test_real_sleep_between_attempts(server: LLMTestServer) -> None:
    server.script(script.rate_limited("0"), script.server_error(500))
    provider = OpenAICompatProvider(
        server.base_url, "", timeout_s=2.0, policy=BackoffPolicy(max_attempts=3, base_delay_s=0.01)
    )
    assert provider.chat(_request()).attempts == 3


def test_retry_after_parsing() -> None:
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after_seconds({}) is None
