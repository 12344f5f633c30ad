"""Embedding service: one process holds the local model; run workers and the CLI embed over loopback HTTP.

Loading all-MiniLM-L6-v2 (torch + sentence-transformers) takes 5-15 s of CPU; a run worker or a CLI
call that loaded it for one query paid that every time. `agentflow up` starts this service
(`python -m agentflow_dagster.rag.embed_service --port N`) and `LocalEmbedder` sends its texts here
when the service answers with the same model; otherwise it loads the model in-process and logs why.

Protocol: `GET /health` -> JSON {model_id, dimension, pid}; `POST /embed` with JSON {texts,
batch_size} -> the float32 matrix as raw little-endian bytes (`X-Rows`, `X-Dimension` headers), so
vectors arrive bit-identical to what the same model computes in-process. The server encodes each
request on its own (never batched with another request's texts: padding would change the last bits).
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import numpy as np

    from agentflow_dagster.stack.checks import Check
    from agentflow_dagster.stack.services import Service

DEFAULT_PORT = 58100
MAX_TEXTS = 4096
_log = logging.getLogger(__name__)


def default_url() -> str:
    """AGENTFLOW_EMBED_URL, else the address the local stack recorded, else 127.0.0.1:58100."""
    url = os.environ.get("AGENTFLOW_EMBED_URL", "").strip()
    if url:
        return url.rstrip("/")
    state = Path(os.environ.get("AGENTFLOW_DATA_DIR") or ".agentflow") / "stack.json"
    try:
        rec = json.loads(state.read_text())["services"].get("embeddings") or {}
    except (OSError, ValueError, KeyError):
        rec = {}
    if rec.get("managed") and rec.get("address"):
        return str(rec["address"])
    return f"http://127.0.0.1:{int(os.environ.get('AGENTFLOW_EMBED_PORT') or DEFAULT_PORT)}"


class EmbedServiceError(RuntimeError):
    """The service did not answer, or answered something other than vectors."""


class EmbedClient:
    """A keep-alive HTTP/1.1 connection per thread and process (a forked worker opens its own)."""

    def __init__(self, url: str, timeout: float = 30.0):
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"embedding service URL {url!r} must look like http://127.0.0.1:{DEFAULT_PORT}")
        self.url = url.rstrip("/")
        self.host, self.port = parts.hostname, parts.port or 80
        self.timeout = timeout
        self._local = threading.local()

    def _conn(self, timeout: float) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            self._local.conn, self._local.pid = conn, os.getpid()
        conn.timeout = timeout
        if conn.sock is not None:  # a kept-alive socket keeps the timeout it was opened with
            conn.sock.settimeout(timeout)
        return conn

    def _request(self, method: str, path: str, body: bytes | None, timeout: float) -> tuple[int, Any, bytes]:
        # Embedding is idempotent: a keep-alive connection the server closed is retried once, fresh.
        for attempt in (0, 1):
            conn = self._conn(timeout)
            try:
                headers = {"Content-Type": "application/json"} if body is not None else {}
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.headers, resp.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                self._local.conn = None
                if attempt or isinstance(exc, TimeoutError | ConnectionRefusedError):
                    raise EmbedServiceError(f"{self.url}{path}: {type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")

    def health(self, timeout: float = 2.0) -> dict[str, Any]:
        status, _, raw = self._request("GET", "/health", None, timeout)
        if status != 200:
            raise EmbedServiceError(f"{self.url}/health answered HTTP {status}")
        return dict(json.loads(raw))

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        import numpy as np  # here, not at import: `agentflow status` imports this module

        rows, dim, raw = self.embed_bytes(texts, batch_size)
        return np.frombuffer(raw, dtype="<f4").reshape(rows, dim).astype(np.float32)

    def embed_bytes(self, texts: Sequence[str], batch_size: int = 64) -> tuple[int, int, bytes]:
        """(rows, dimension, little-endian float32 bytes), checked against the texts sent."""
        body = json.dumps({"texts": list(texts), "batch_size": batch_size}).encode()
        # One request per call keeps the batches what an in-process encode would make (identical
        # vectors), so a large call gets time in proportion. Generous: giving up makes the caller load
        # the model itself while the service still finishes the abandoned request (double the work).
        timeout = self.timeout + 1.0 * len(texts)
        status, headers, raw = self._request("POST", "/embed", body, timeout)
        if status != 200:
            raise EmbedServiceError(
                f"{self.url}/embed answered HTTP {status}: {raw[:300].decode(errors='replace')}"
            )
        rows, dim = int(headers["X-Rows"]), int(headers["X-Dimension"])
        if rows != len(texts) or len(raw) != rows * dim * 4:
            raise EmbedServiceError(f"{self.url}/embed sent {len(raw)} bytes for {len(texts)} texts x {dim}")
        return rows, dim, raw


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: one connection per client thread
    # The answer goes out as two writes (headers, then the vectors): with Nagle's algorithm the second
    # waited for the client's delayed ACK, ~40 ms per query on loopback (60 -> 19 ms p50 without it).
    disable_nagle_algorithm = True
    embedder: Any = None
    lock = threading.Lock()
    started = time.time()

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._send(status, json.dumps({"error": message}).encode(), "application/json")

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path != "/health":
            return self._error(404, f"no {self.path}: GET /health or POST /embed")
        emb = self.embedder
        info = {"model_id": emb.model_id, "dimension": emb.dimension, "pid": os.getpid(), "path": emb.path}
        self._send(200, json.dumps(info).encode(), "application/json")

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/embed":
            return self._error(404, f"no {self.path}: POST /embed")
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            texts, batch_size = body["texts"], int(body.get("batch_size") or 64)
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise ValueError("field 'texts' must be a list of strings")
            if len(texts) > MAX_TEXTS or not 1 <= batch_size <= 1024:
                raise ValueError(f"at most {MAX_TEXTS} texts and 1 <= batch_size <= 1024 per request")
        except (ValueError, KeyError, TypeError) as exc:
            return self._error(400, f"{type(exc).__name__}: {exc}")
        with self.lock:  # one forward pass at a time: the model's threads already use the cores
            self.embedder.batch_size = batch_size
            vecs = self.embedder.embed(texts)
        import numpy as np

        rows, dim = vecs.shape
        headers = {"X-Rows": str(rows), "X-Dimension": str(dim)}
        body = np.ascontiguousarray(vecs, dtype="<f4").tobytes()
        try:
            self._send(200, body, "application/octet-stream", headers)
        except (BrokenPipeError, ConnectionResetError):
            _log.warning("client gone before the answer to %d texts (its timeout passed)", rows)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # one line per query would flood the stack log


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up while the model loaded (its request waited in the backlog) is gone
        # by the time it is answered: one line, not a traceback per probe.
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError):
            _log.info("client %s left before its answer: %s", client_address, exc)
        else:
            super().handle_error(request, client_address)


def make_server(
    host: str, port: int, model_path: str | None = None, threads: int = 0, fd: int | None = None
) -> _Server:
    """Load and warm the model, then bind (or serve on `fd`, a listening socket the parent bound).

    `threads` > 0 sets AGENTFLOW_EMBED_THREADS for this process.
    """
    from agentflow_dagster.rag.embedders import LocalEmbedder

    if threads > 0:
        # The in-process fallback must use the same count to compute identical vectors.
        os.environ["AGENTFLOW_EMBED_THREADS"] = str(threads)
    embedder = LocalEmbedder(model_path, service_url=None)
    embedder.embed(["warm up"])
    handler = type("EmbedHandler", (_Handler,), {"embedder": embedder, "lock": threading.Lock()})
    if fd is None:
        return _Server((host, port), handler)
    server = _Server((host, port), handler, bind_and_activate=False)
    server.socket.close()
    server.socket = socket.socket(fileno=fd)
    server.server_address = server.socket.getsockname()[:2]
    return server


def _listen(host: str, port: int | None) -> socket.socket:
    """A listening socket on `port`, else on DEFAULT_PORT, else on any free port.

    Bound here, before the child spends seconds loading the model: a port that was only checked
    could be taken in between (58100 lies in Linux's ephemeral range; a clean-clone CI run lost it to
    another process and the service exited before answering).
    """
    from agentflow_dagster.stack.services import port_taken

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        try:
            sock.bind((host, DEFAULT_PORT if port is None else port))
        except OSError as exc:
            if port is not None:
                raise port_taken("embed", port) from exc
            sock.bind((host, 0))
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def wait_ready(url: str, timeout: float = 120.0, pid: int | None = None) -> dict[str, Any]:
    """Poll /health until the service answers (its model loads first); TimeoutError, or if `pid` died."""
    client = EmbedClient(url)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.health(timeout=1.0)
        except EmbedServiceError:
            if pid is not None and not _alive(pid):
                raise TimeoutError(f"embedding service {url} (pid {pid}) exited before answering") from None
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"embedding service {url} did not answer /health within {timeout:.0f}s"
                ) from None
            time.sleep(0.25)


def _alive(pid: int) -> bool:
    from agentflow_dagster.stack.services import pid_alive

    return pid_alive(pid)


# --- the local stack's hooks (`agentflow up`, `status`, `down`) ---------------------------------


def stack_external() -> str | None:
    """The address `agentflow up` should use instead of starting a service (None: start one)."""
    if os.environ.get("AGENTFLOW_EMBEDDINGS_PROVIDER", "local") != "local":
        return "not used (AGENTFLOW_EMBEDDINGS_PROVIDER is not 'local')"
    return os.environ.get("AGENTFLOW_EMBED_URL") or None


def start_service(data_dir: Path, env: Mapping[str, str]) -> Service:
    """Spawn the service (logs in data_dir/logs/embeddings.log); the stack records its address.

    Port: AGENTFLOW_EMBED_PORT (must be free), else 58100, else any free port (two stacks, tests).
    This process binds it and hands the listening socket to the service, so no other process can
    take the port while the model loads; clients that connect meanwhile wait in the backlog.
    """
    import subprocess
    import sys

    from agentflow_dagster.stack.services import Service

    wanted = env.get("AGENTFLOW_EMBED_PORT")
    sock = _listen("127.0.0.1", int(wanted) if wanted else None)
    port = int(sock.getsockname()[1])
    log = data_dir / "logs" / "embeddings.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", __name__, "--port", str(port), "--fd", str(sock.fileno())],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,
                pass_fds=(sock.fileno(),),
            )
    finally:
        sock.close()  # the service holds its own copy
    return Service("embeddings", proc.pid, f"http://127.0.0.1:{port}", str(log))


def wait_started(url: str, log: str, pid: int, timeout: float = 180.0) -> None:
    """`agentflow up` returns once the model answers, so the first run never loads it itself."""
    from agentflow_dagster.stack.services import StackError

    try:
        wait_ready(url, timeout, pid)
    except TimeoutError as exc:
        raise StackError("embeddings", url, str(exc), f"see {log}") from exc


def check(url: str) -> Check:
    """`agentflow status`: the model the service holds, and one real query through it."""
    from agentflow_dagster.stack.checks import _run

    def probe() -> str:
        client = EmbedClient(url, timeout=5.0)
        info = client.health()
        t0 = time.perf_counter()
        client.embed_bytes(["status probe"])  # the vector's bytes checked, without importing numpy
        return f"{info['model_id']} dim {info['dimension']}, query {1000 * (time.perf_counter() - t0):.0f} ms"

    return _run("embeddings", url, probe)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--model-path", default=None, help="a sentence-transformers folder (default: the wheel's)"
    )
    parser.add_argument("--threads", type=int, default=0, help="0: AGENTFLOW_EMBED_THREADS, else 1")
    parser.add_argument(
        "--fd", type=int, default=None, help="serve on this inherited listening socket (`agentflow up`)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    server = make_server(args.host, args.port, args.model_path, args.threads, args.fd)
    emb = server.RequestHandlerClass.embedder  # type: ignore[attr-defined]
    _log.info("serving %s (dim %d) on http://%s:%d, loaded in %.1f s", emb.model_id, emb.dimension,
              args.host, args.port, time.perf_counter() - t0)  # fmt: skip
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
