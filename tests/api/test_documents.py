"""Uploads to the object store with their ingest event, collection isolation, traversal, search."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

from fastapi.testclient import TestClient

from agentflow_dagster import names
from agentflow_dagster.events import DocumentEvent
from resources.object_store import ObjectStore
from tests.api.conftest import Keys, read_topic


def _collection() -> str:
    return f"kb_{uuid.uuid4().hex[:8]}"


def test_upload_stores_the_object_and_emits_one_event(
    client: TestClient, keys: Keys, kafka_bootstrap: str, object_store: ObjectStore
) -> None:
    coll = _collection()
    data = b"# Refunds\nRefunds take 5 business days.\n"
    r = client.post(
        "/v1/documents",
        params={"collection": coll, "name": "policies/refunds.md"},
        content=data,
        headers={**keys("acme", "submit"), "Content-Type": "text/markdown"},
    )
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["key"] == f"{coll}/policies/refunds.md" and body["bucket"] == names.BUCKET_DOCUMENTS
    assert object_store.get(names.BUCKET_DOCUMENTS, body["key"]) == data
    events = [
        DocumentEvent.model_validate_json(rec.value)
        for rec in read_topic(kafka_bootstrap, names.TOPIC_DOCUMENTS)
        if rec.json().get("collection") == coll
    ]
    assert [(e.event_id, e.key, e.action) for e in events] == [(body["event_id"], body["key"], "add")]


def test_another_tenants_collection_is_404_for_upload_and_search(client: TestClient, keys: Keys) -> None:
    coll = _collection()
    mine = client.post(
        "/v1/documents", params={"collection": coll, "name": "a.txt"}, content=b"a", headers=keys("acme")
    )
    assert mine.status_code == 202
    theirs = keys("globex", "submit", "read")
    up = client.post(
        "/v1/documents", params={"collection": coll, "name": "b.txt"}, content=b"b", headers=theirs
    )
    assert up.status_code == 404
    for c in (coll, _collection()):  # taken and never-seen collections answer alike
        r = client.get("/v1/search", params={"q": "refund", "collection": c}, headers=theirs)
        assert r.status_code == 404 and r.json()["detail"] == f"collection {c!r} not found"


def test_traversal_and_odd_names_are_refused(client: TestClient, keys: Keys, object_store_dir: Path) -> None:
    headers = keys("acme", "submit")
    coll = _collection()
    bad_names = [
        "../escape.txt",
        "a/../../escape.txt",
        "/abs.txt",
        "a//b.txt",
        ".",
        "a/./b",
        "x\\..\\y",
        "a'; --",
    ]
    for name in bad_names:
        r = client.post(
            "/v1/documents", params={"collection": coll, "name": name}, content=b"x", headers=headers
        )
        assert r.status_code == 422, (name, r.text)
    for coll_name in ("../x", "Docs", "a/b", "x'; DROP TABLE api_collections; --", ""):
        r = client.post(
            "/v1/documents", params={"collection": coll_name, "name": "a.txt"}, content=b"x", headers=headers
        )
        assert r.status_code == 422, (coll_name, r.text)
    assert not (object_store_dir / "escape.txt").exists()
    assert not (object_store_dir.parent / "escape.txt").exists()


def test_document_size_limit_is_413_declared_or_chunked(client: TestClient, keys: Keys) -> None:
    headers = keys("acme", "submit")
    big = b"x" * (64 * 1024 + 1)
    r = client.post(
        "/v1/documents", params={"collection": _collection(), "name": "big.txt"}, content=big, headers=headers
    )
    assert r.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced on the bytes read
        for _ in range(20):
            yield b"y" * 8192

    r = client.post(
        "/v1/documents",
        params={"collection": _collection(), "name": "big.txt"},
        content=chunks(),
        headers=headers,
    )
    assert r.status_code == 413
    assert (
        client.post(
            "/v1/documents",
            params={"collection": _collection(), "name": "e.txt"},
            content=b"",
            headers=headers,
        ).status_code
        == 422
    )


def test_search_answers_from_the_live_index(client: TestClient, keys: Keys, pg_url: str) -> None:
    """Index two chunks through the pgvector store with the offline embedder, then search them over HTTP."""
    from agentflow_dagster.rag.store import VectorRecord
    from resources.embeddings import EmbeddingsResource
    from resources.vector_store import VectorStoreResource

    headers = keys("acme", "submit", "read")
    coll = _collection()
    assert (
        client.post(
            "/v1/documents", params={"collection": coll, "name": "r.txt"}, content=b"r", headers=headers
        ).status_code
        == 202
    )
    texts = ["Refunds are paid back within five business days.", "Our office cat is named Biscuit."]
    embedder = EmbeddingsResource().build()
    vectors = embedder.embed(texts)
    store = VectorStoreResource(postgres_url=pg_url).build()
    try:
        store.rebuild(
            coll,
            [
                VectorRecord(f"c{i}", f"{coll}/r.txt", "v1", i, 0, len(t), t, vectors[i].tolist())
                for i, t in enumerate(texts)
            ],
            model=embedder.model_id,
            dim=embedder.dimension,
        )
    finally:
        store.close()
    r = client.get(
        "/v1/search", params={"q": "how long do refunds take?", "collection": coll, "k": 1}, headers=headers
    )
    assert r.status_code == 200, r.text
    [hit] = r.json()["hits"]
    assert hit["chunk_id"] == "c0" and hit["document"] == f"{coll}/r.txt"
    assert (
        client.get("/v1/search", params={"q": "x", "collection": coll, "k": 21}, headers=headers).status_code
        == 422
    )
