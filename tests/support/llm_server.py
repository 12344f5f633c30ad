"""A loopback OpenAI-compatible chat server with scripted responses, for testing retries and fallbacks."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Action:
    """What the server does with one request."""

    kind: (
        str  # ok | status | slow | trickle | invalid_json | truncated | bad_schema | broken_body | tool_calls
    )
    status: int = 200
    retry_after: str | None = None
    delay_s: float = 0.0
    content: str | None = None
    calls: tuple[tuple[str, str], ...] = ()  # (tool name, arguments JSON text) for `tool_calls`


def ok(content: str | None = None) -> Action:
    """200 with a JSON answer valid against the requested schema (or `content`)."""
    return Action("ok", content=content)


def rate_limited(retry_after: float | str = 1) -> Action:
    """429 with a Retry-After header."""
    return Action("status", status=429, retry_after=str(retry_after))


def server_error(status: int = 500) -> Action:
    return Action("status", status=status)


def slow(delay_s: float) -> Action:
    """Answer correctly, but only after `delay_s` (longer than the client's timeout)."""
    return Action("slow", delay_s=delay_s)


def trickle(total_s: float) -> Action:
    """Headers at once, then the body a byte at a time over `total_s`: no single read ever times out."""
    return Action("trickle", delay_s=total_s)


def invalid_json() -> Action:
    """200 whose message content is not JSON."""
    return Action("invalid_json")


def truncated() -> Action:
    """200 with finish_reason=length and half a JSON object."""
    return Action("truncated")


def bad_schema() -> Action:
    """200 with JSON that does not validate against the agent's schema."""
    return Action("bad_schema")


def tool_calls(*calls: tuple[str, dict[str, Any] | str]) -> Action:
    """200 whose assistant message asks for these tools (name, arguments; a str is sent verbatim)."""
    return Action(
        "tool_calls", calls=tuple((n, a if isinstance(a, str) else json.dumps(a)) for n, a in calls)
    )


def broken_body() -> Action:
    """200 whose HTTP body is not JSON at all."""
    return Action("broken_body")


def instance(schema: dict[str, Any], defs: dict[str, Any] | None = None, name: str = "value") -> Any:
    """A small instance of a JSON schema (what a well-behaved model would return)."""
    defs = defs if defs is not None else schema.get("$defs", {})
    if "$ref" in schema:
        return instance(defs[schema["$ref"].split("/")[-1]], defs, name)
    if "anyOf" in schema:
        return instance(next(s for s in schema["anyOf"] if s.get("type") != "null"), defs, name)
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):  # ["boolean", "null"]: answer with the first non-null type
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        return {k: instance(v, defs, k) for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        count = max(int(schema.get("minItems", 0)), 2)
        count = min(count, int(schema.get("maxItems", count)))
        return [instance(schema.get("items", {"type": "string"}), defs, f"{name} {i}") for i in range(count)]
    if kind == "boolean":
        return True
    if kind in ("number", "integer"):
        return (
            schema.get("minimum", 0) if kind == "integer" else max(0.0, min(1.0, schema.get("maximum", 0.8)))
        )
    if "pattern" in schema:
        return schema.get("default", "support_kb")
    return f"scripted {name}"


class LLMTestServer:
    """Threaded HTTP server on a free 127.0.0.1 port; `requests` records every request body it received."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self._queue: deque[Action] = deque()
        self._rules: list[tuple[Callable[[dict[str, Any]], bool], Action]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="llm-test-server", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> LLMTestServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> LLMTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def script(self, *actions: Action) -> None:
        """Queue one-shot actions, used by the next requests in order (then `ok`)."""
        with self._lock:
            self._queue.extend(actions)

    def rule(self, when: Callable[[dict[str, Any]], bool], action: Action) -> None:
        """A sticky action for every request matching `when` (checked before the queue)."""
        with self._lock:
            self._rules.append((when, action))

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
            self._rules.clear()
            self.requests.clear()

    def count(self, when: Callable[[dict[str, Any]], bool] | None = None) -> int:
        """Requests received (matching `when`)."""
        with self._lock:
            return sum(1 for r in self.requests if when is None or when(r))

    def _next_action(self, body: dict[str, Any]) -> Action:
        with self._lock:
            self.requests.append(body)
            for when, action in self._rules:
                if when(body):
                    return action
            return self._queue.popleft() if self._queue else ok()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet test output
                return

            def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                action = server._next_action(body)
                if action.kind == "status":
                    headers = {"Retry-After": action.retry_after} if action.retry_after else {}
                    error = {"error": {"message": f"scripted {action.status}", "type": "scripted"}}
                    self._send(action.status, json.dumps(error).encode(), headers)
                    return
                if action.kind == "slow":
                    server._stopping.wait(action.delay_s)
                if action.kind == "broken_body":
                    self._send(200, b"<html>upstream proxy error</html>")
                    return
                fmt = body.get("response_format") or {}
                schema = (fmt.get("json_schema") or {}).get("schema") or {"type": "object", "properties": {}}
                answer = action.content or json.dumps(instance(schema))
                finish = "stop"
                if action.kind == "invalid_json":
                    answer = "Sure! Here is the answer you asked for."
                elif action.kind == "truncated":
                    answer, finish = answer[: max(1, len(answer) // 2)], "length"
                elif action.kind == "bad_schema":
                    answer = json.dumps({"unexpected": "shape"})
                message: dict[str, Any] = {"role": "assistant", "content": answer}
                if action.kind == "tool_calls":
                    n = len(server.requests)
                    message = {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": f"call_{n}_{i}",
                                "type": "function",
                                "function": {"name": a, "arguments": b},
                            }
                            for i, (a, b) in enumerate(action.calls)
                        ],
                    }
                    finish = "tool_calls"
                payload = {
                    "id": f"chatcmpl-{len(server.requests)}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "test-model"),
                    "choices": [
                        {
                            "index": 0,
                            "message": message,
                            "finish_reason": finish,
                        }
                    ],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
                }
                if action.kind == "trickle":
                    self._trickle(json.dumps(payload).encode(), action.delay_s)
                    return
                self._send(200, json.dumps(payload).encode())

            def _trickle(self, payload: bytes, total_s: float) -> None:
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.flush()
                    pause = total_s / max(1, len(payload))
                    for i in range(len(payload)):
                        if server._stopping.wait(pause):
                            return
                        self.wfile.write(payload[i : i + 1])
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up

        return Handler
