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
