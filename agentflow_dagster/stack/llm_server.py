"""The optional local model server: `python -m llama_cpp.server` on loopback serving one GGUF file."""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from agentflow_dagster.stack.checks import Check
from agentflow_dagster.stack.services import Service, StackError, _require_free, wait_for

# llama-cpp-python's one handler that answers `tools` with tool_choice "auto" for any model, by ChatML
# prompts and grammars; the default ("") is the chat template stored in the GGUF file (docs/llm.md).
TOOLS_CHAT_FORMAT = "chatml-function-calling"
# llama-cpp-python accepts `{"type": "json_object", "schema": ...}`, not OpenAI's `json_schema` type.
RESPONSE_FORMAT = "json_object_schema"
_INSTALL_FIX = 'pip install -e ".[llm-server]" (bash .ci/setup.sh builds and caches the wheel)'
# pydantic-settings in llama_cpp.server reads every field from the environment (HOST, PORT, MODEL,
# API_KEY, N_CTX, ...): the server gets only what a Python process needs, plus our arguments.
_ENV_KEPT = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")


def model_alias(gguf: Path) -> str:
    """The model name the server answers to and reports: the file name without `.gguf`."""
    return gguf.name.removesuffix(".gguf")


def check_gguf(gguf: Path) -> Path:
    """The resolved path of a readable GGUF file, else a StackError naming the path and the fix."""
    path = gguf.expanduser().resolve()
    fix = "pass the path of a .gguf model file with --llm-gguf or AGENTFLOW_LLM_GGUF"
    if not path.is_file():
        raise StackError("llm", str(path), "no such file", fix)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise StackError("llm", str(path), f"not a GGUF file (starts with {magic!r})", fix)
    return path


def _require_llama_cpp() -> None:
    missing = [m for m in ("llama_cpp", "uvicorn", "sse_starlette") if importlib.util.find_spec(m) is None]
    if missing:
        raise StackError("llm", "llama_cpp.server", f"{', '.join(missing)} not installed", _INSTALL_FIX)


def server_args(gguf: Path, port: int, chat_format: str, extra: str = "") -> list[str]:
    """The command line of the server (`extra`: any other `llama_cpp.server` options, shell-quoted)."""
    args = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf)]
    args += ["--model_alias", model_alias(gguf), "--host", "127.0.0.1", "--port", str(port)]
    if chat_format:
        args += ["--chat_format", chat_format]
    return args + shlex.split(extra)


def start_llm_server(
    data_dir: Path, gguf: Path, port: int, chat_format: str = "", extra: str = ""
) -> Service:
    """Start the server on 127.0.0.1:port and wait until the model is loaded; log in data_dir/llm."""
    path = check_gguf(gguf)
    _require_llama_cpp()
    _require_free("llm", port)
    log = data_dir / "llm" / "server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k in _ENV_KEPT}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            server_args(path, port, chat_format, extra),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}/v1"

    def ready() -> bool:
        if proc.poll() is not None:
            return True
        try:
            return httpx.get(f"{base_url}/models", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, 180, "llm server", interval=0.5)
    except TimeoutError as exc:
        proc.kill()
        raise StackError("llm", base_url, "the model did not load within 180 s", f"see {log}") from exc
    if proc.poll() is not None:
        tail = log.read_text(errors="replace")[-400:].strip().replace("\n", " | ")
        raise StackError("llm", base_url, f"the server exited at start: {tail}", f"see {log}")
    return Service("llm", proc.pid, base_url, str(log))


def complete(base_url: str, model: str, prompt: str, max_tokens: int, timeout: float = 120) -> dict[str, Any]:
    """One plain text completion (the server's JSON answer); raises on any HTTP or protocol error.

    A plain completion, not a chat turn: any model, base or instruct, continues a text, while a base
    model in a chat turn may end it at once and show no generation at all."""
    resp = httpx.post(
        f"{base_url}/completions",
        json={"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0},
        timeout=timeout,
    )
    resp.raise_for_status()
    body = resp.json()
    if not body.get("choices") or "usage" not in body:
        raise RuntimeError(f"answer without choices or usage: {str(body)[:200]}")
    return dict(body)


def check_llm_server(base_url: str, model: str) -> Check:
    """A real completion of a few tokens: the model answers and the server reports its token usage."""
    started = time.monotonic()
    try:
        body = complete(base_url, model, "The capital of France is", max_tokens=4, timeout=60)
    except Exception as exc:  # every failure of the probe is a finding, not a crash
        detail = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        return Check("llm", base_url, False, detail)
    ms = (time.monotonic() - started) * 1000
    usage = body["usage"]
    detail = (
        f"{body.get('model', model)}: {usage['prompt_tokens']} prompt + {usage['completion_tokens']} "
        f"completion tokens in {ms:.0f} ms"
    )
    return Check("llm", base_url, True, detail)
