"""Embedders: the offline model, and an OpenAI-compatible endpoint served on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from resources.embeddings import EmbeddingsResource


class _Handler(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Handler.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
        dim = body.get("dimensions", 4)
        # Out of order on purpose: the client must sort by `index`.
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(t))] + [1.0] * (dim - 1)}
            for i, t in reversed(list(enumerate(body["input"])))
        ]
        raw = json.dumps({"object": "list", "data": data, "model": body["model"],
                          "usage": {"prompt_tokens": 1, "total_tokens": 1}}).encode()  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[str]:
    _Handler.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def test_openai_compatible_endpoint_batches_sorts_and_normalises(server: str) -> None:
    res = EmbeddingsResource(provider="openai", model="text-embedding-3-small", base_url=server,
                             api_key="sk-test", dimensions=3, batch_size=2)  # fmt: skip
    vecs = res.embed(["a", "bbb", "cc"])
    assert [r["input"] for r in _Handler.requests] == [["a", "bbb"], ["cc"]]
    assert all(r["model"] == "text-embedding-3-small" and r["dimensions"] == 3 for r in _Handler.requests)
    assert (
        _Handler.requests[0]["path"] == "/v1/embeddings" and _Handler.requests[0]["auth"] == "Bearer sk-test"
    )
    assert vecs.shape == (3, 3) and np.allclose(np.linalg.norm(vecs, axis=1), 1.0)
    assert vecs[1, 0] > vecs[2, 0] > vecs[0, 0]  # order follows the inputs (lengths 1, 3, 2)
    assert res.model_id == "openai:text-embedding-3-small@3" and res.dimension == 3


def test_local_model_is_normalised_and_semantic(embeddings: EmbeddingsResource) -> None:
    v = embeddings.embed(
        ["a cat sits on the mat", "a kitten rests on a rug", "quarterly tax filing deadline"]
    )
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
    assert embeddings.model_id == "local:all-MiniLM-L6-v2" and embeddings.dimension == 384


def test_unknown_provider_is_named() -> None:
    with pytest.raises(ValueError, match="'cohere'"):
        EmbeddingsResource(provider="cohere").build()


@pytest.fixture(scope="module")
def embed_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service started by the stack's hook on a free loopback port; stopped by pid."""
    import os

    from agentflow_dagster.rag import embed_service as svc
    from agentflow_dagster.stack import services

    env = {**os.environ, "AGENTFLOW_EMBED_PORT": str(services.free_port())}
    started = svc.start_service(tmp_path_factory.mktemp("embed"), env)
    try:
        svc.wait_started(started.address, started.log, started.pid)
        yield started.address
    finally:
        services.stop_pid(started.pid)


def test_the_port_is_held_from_the_start_and_a_taken_one_is_named() -> None:
    """`agentflow up` binds the port before the service loads its model (nothing can take it meanwhile)."""
    import socket

    from agentflow_dagster.rag import embed_service as svc
    from agentflow_dagster.stack.services import StackError, port_in_use

    squatter = socket.create_server(("127.0.0.1", 0))
    taken = squatter.getsockname()[1]
    try:
        with pytest.raises(StackError, match=rf"127\.0\.0\.1:{taken}.*AGENTFLOW_EMBED_PORT"):
            svc._listen("127.0.0.1", taken)
        held = svc._listen("127.0.0.1", None)  # 58100, else any free port
        try:
            port = held.getsockname()[1]
            assert port != taken and port_in_use(port)  # listening (backlog) before any child exists
            with pytest.raises(OSError):
                socket.create_server(("127.0.0.1", port))
        finally:
            held.close()
    finally:
        squatter.close()


def test_status_check_embeds_a_real_query(embed_service: str) -> None:
    from agentflow_dagster.rag.embed_service import check

    result = check(embed_service)
    assert result.healthy and result.detail.startswith("local:all-MiniLM-L6-v2 dim 384, query "), result


def test_stopped_service_is_reported_down() -> None:
    from agentflow_dagster.rag.embed_service import check
    from agentflow_dagster.stack import services

    result = check(f"http://127.0.0.1:{services.free_port()}")
    assert not result.healthy and "ConnectionRefusedError" in result.detail


TEXTS = [
    "how do I reset my password?",
    "a much longer question about invoices, refunds and the quarterly billing cycle of an account",
    "ünïcödé and emoji 🚀",
    "",
]


def test_service_vectors_are_identical_to_the_in_process_model(
    embed_service: str, embeddings: EmbeddingsResource
) -> None:
    from agentflow_dagster.rag.embedders import LocalEmbedder

    remote = LocalEmbedder(service_url=embed_service)
    local = LocalEmbedder(service_url=None)
    for texts in (TEXTS[:1], TEXTS, TEXTS[1:3]):
        assert np.array_equal(remote.embed(texts), local.embed(texts))
    assert remote._remote() is not None  # answered by the service, not by a fallback
    assert remote.dimension == 384 and remote.model_id == local.model_id


def test_a_process_using_the_service_never_imports_torch(embed_service: str) -> None:
    import subprocess
    import sys

    code = (
        "import sys; from resources.embeddings import EmbeddingsResource as R; "
        "v = R().embed(['hello']); print(v.shape, 'torch' in sys.modules)"
    )
    env = {**__import__("os").environ, "AGENTFLOW_EMBED_URL": embed_service}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "(1, 384) False", out.stderr


def test_unreachable_service_falls_back_in_process_with_a_log_line(
    embeddings: EmbeddingsResource, caplog: pytest.LogCaptureFixture
) -> None:
    from agentflow_dagster.rag.embedders import LocalEmbedder
    from agentflow_dagster.stack import services

    url = f"http://127.0.0.1:{services.free_port()}"
    with caplog.at_level("WARNING", logger="agentflow_dagster.rag.embedders"):
        vecs = LocalEmbedder(service_url=url).embed(TEXTS[:2])
    assert np.array_equal(vecs, LocalEmbedder(service_url=None).embed(TEXTS[:2]))
    assert (
        f"embedding service {url} not reachable" in caplog.text and "loading local:all-MiniLM" in caplog.text
    )


def test_service_names_a_bad_request(embed_service: str) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", int(embed_service.rsplit(":", 1)[1]), timeout=10)
    conn.request("POST", "/embed", body=json.dumps({"texts": "not a list"}))
    resp = conn.getresponse()
    assert resp.status == 400 and b"'texts' must be a list of strings" in resp.read()
    conn.close()


def test_search_command_uses_the_service_and_imports_neither_torch_nor_dagster(
    embed_service: str, pg_url: str
) -> None:
    import os
    import subprocess
    import sys

    from agentflow_dagster.rag.embedders import LocalEmbedder
    from agentflow_dagster.rag.pgvector_store import PgVectorStore
    from agentflow_dagster.rag.store import VectorRecord

    texts = ["Pyroclastic flows race down volcano slopes.", "Sourdough rises overnight in the fridge."]
    vecs = LocalEmbedder(service_url=embed_service).embed(texts)
    records = [
        VectorRecord(f"c{i}", f"doc{i}.txt", "v1", 0, 0, len(t), t, v.tolist())
        for i, (t, v) in enumerate(zip(texts, vecs, strict=True))
    ]
    store = PgVectorStore(pg_url)
    store.rebuild("searchcli", records, model="local:all-MiniLM-L6-v2", dim=384)
    store.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFLOW_")}
    env.update(AGENTFLOW_POSTGRES_URL=pg_url, AGENTFLOW_EMBED_URL=embed_service)
    args = [sys.executable, "-X", "importtime", "-m", "agentflow_dagster", "search", "hot volcanic ash flow"]
    out = subprocess.run(
        [*args, "-c", "searchcli", "-k", "1", "--json"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)[0]["document"] == "doc0.txt"
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert not {"torch", "dagster", "sentence_transformers"} & imported
    assert "embedding service" not in out.stderr  # no fallback line: the service answered
