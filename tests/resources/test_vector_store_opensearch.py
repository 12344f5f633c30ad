"""OpenSearch store: the exact HTTP requests it sends (recorded below the real client), and a live test
that runs when AGENTFLOW_OPENSEARCH_URL points at a cluster with the k-NN plugin."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from opensearchpy import Connection, OpenSearch

from agentflow_dagster.rag.opensearch_store import OpenSearchBulkError, OpenSearchVectorStore
from agentflow_dagster.rag.store import SearchFilter, VectorRecord
from resources.vector_store import VectorStoreResource

Responder = Callable[[str, str, Any], tuple[int, Any]]


class RecordingConnection(Connection):
    """Records every request the real client would send; answers from `responder` (method, url, body)."""

    calls: list[tuple[str, str, dict[str, Any], Any]] = []
    responder: Responder = staticmethod(lambda method, url, body: (200, {"acknowledged": True}))

    def perform_request(  # type: ignore[override]
        self, method: str, url: str, params: Any = None, body: Any = None, timeout: Any = None,
        ignore: Any = (), headers: Any = None,
    ) -> tuple[int, dict[str, str], str]:  # fmt: skip
        text = body.decode() if isinstance(body, bytes) else body
        if text and url.split("?")[0].endswith(("_bulk", "_msearch")):
            parsed: Any = [json.loads(line) for line in text.strip().split("\n")]
        else:
            parsed = json.loads(text) if text else None
        RecordingConnection.calls.append((method, url, dict(params or {}), parsed))
        status, data = RecordingConnection.responder(method, url, parsed)
        raw = json.dumps(data)
        if status >= 300 and status not in ignore:
            self._raise_error(status, raw, "application/json")
        return status, {"content-type": "application/json"}, raw


@pytest.fixture()
def rec() -> Iterator[type[RecordingConnection]]:
    RecordingConnection.calls = []
    yield RecordingConnection
    RecordingConnection.responder = staticmethod(lambda method, url, body: (200, {"acknowledged": True}))


def make_store(**kw: Any) -> OpenSearchVectorStore:
    client = OpenSearch(hosts=["http://opensearch.invalid:9200"], connection_class=RecordingConnection)
    return OpenSearchVectorStore(client, clock=lambda: 1_700_000_000.123, **kw)


def rec_(i: int, dim: int = 3) -> VectorRecord:
    return VectorRecord(
        f"id{i}", "docs/a.md", "v1", i, i * 10, i * 10 + 9, f"text {i}", [0.5] * dim, {"ext": "md"}
    )


def test_index_body_is_a_knn_hnsw_mapping() -> None:
    store = make_store(engine="faiss", space_type="innerproduct", hnsw_m=24, hnsw_ef_construction=200)
    body = store.index_body("docs", "local:all-MiniLM-L6-v2", 384)
    assert body["settings"] == {
        "index": {
            "knn": True,
            "knn.algo_param.ef_search": 100,
            "number_of_shards": 1,
            "number_of_replicas": 0,
        }
    }
    props = body["mappings"]["properties"]
    assert props["embedding"] == {
        "type": "knn_vector",
        "dimension": 384,
        "method": {
            "name": "hnsw",
            "engine": "faiss",
            "space_type": "innerproduct",
            "parameters": {"m": 24, "ef_construction": 200},
        },
    }
    assert props["text"] == {"type": "text"} and props["document"] == {"type": "keyword"}
    assert body["mappings"]["_meta"] == {"collection": "docs", "model": "local:all-MiniLM-L6-v2", "dim": 384}
    assert body["mappings"]["dynamic_templates"][0]["metadata_strings"]["mapping"] == {"type": "keyword"}


def test_first_apply_creates_index_and_alias_then_bulks(rec: type[RecordingConnection]) -> None:
    def respond(method: str, url: str, body: Any) -> tuple[int, Any]:
        if url.endswith("/_mapping"):
            return 404, {"error": {"type": "index_not_found_exception"}, "status": 404}
        if url.startswith("/_bulk"):
            return 200, {"errors": False, "items": []}
        return 200, {"acknowledged": True}

    rec.responder = staticmethod(respond)
    store = make_store()
    info = store.apply("docs", [rec_(0), rec_(1)], ["gone"], model="m", dim=3)
    assert info.name == "agentflow-rag-docs-1700000000123"
    methods_urls = [(m, u.split("?")[0]) for m, u, _, _ in rec.calls]
    assert methods_urls == [
        ("GET", "/agentflow-rag-docs/_mapping"),
        ("PUT", "/agentflow-rag-docs-1700000000123"),
        ("POST", "/_aliases"),
        ("POST", "/_bulk"),
        ("POST", "/_bulk"),
        ("POST", "/agentflow-rag-docs/_refresh"),
    ]
    assert rec.calls[1][3] == store.index_body("docs", "m", 3)
    assert rec.calls[2][3] == {
        "actions": [{"add": {"index": "agentflow-rag-docs-1700000000123", "alias": "agentflow-rag-docs",
                             "is_write_index": True}}]
    }  # fmt: skip
    assert rec.calls[3][3] == [{"delete": {"_index": "agentflow-rag-docs", "_id": "gone"}}]
    assert rec.calls[4][3] == [
        {"index": {"_index": "agentflow-rag-docs", "_id": "id0"}},
        {"chunk_id": "id0", "collection": "docs", "document": "docs/a.md", "version": "v1", "ordinal": 0,
         "start": 0, "end": 9, "text": "text 0", "metadata": {"ext": "md"}, "embedding": [0.5, 0.5, 0.5]},
        {"index": {"_index": "agentflow-rag-docs", "_id": "id1"}},
        {"chunk_id": "id1", "collection": "docs", "document": "docs/a.md", "version": "v1", "ordinal": 1,
         "start": 10, "end": 19, "text": "text 1", "metadata": {"ext": "md"}, "embedding": [0.5, 0.5, 0.5]},
    ]  # fmt: skip


def test_bulk_errors_are_raised_but_missing_deletes_are_not(rec: type[RecordingConnection]) -> None:
    items = [
        {"delete": {"_id": "gone", "status": 404}},
        {"index": {"_id": "id0", "status": 400, "error": {"type": "mapper_parsing_exception"}}},
    ]
    rec.responder = staticmethod(lambda m, u, b: (200, {"errors": True, "items": items}))
    store = make_store()
    with pytest.raises(OpenSearchBulkError, match="1 bulk actions failed.*mapper_parsing_exception"):
        store._bulk(store.bulk_actions("i", "docs", [rec_(0)], ["gone"]), False)


def test_rebuild_fills_a_new_index_then_swaps_the_alias_in_one_request(
    rec: type[RecordingConnection],
) -> None:
    def respond(method: str, url: str, body: Any) -> tuple[int, Any]:
        if url.startswith("/_alias/") or url.endswith("/_alias/agentflow-rag-docs"):
            return 200, {"agentflow-rag-docs-1": {"aliases": {"agentflow-rag-docs": {}}}}
        if url.startswith("/_bulk"):
            return 200, {"errors": False, "items": []}
        return 200, {"acknowledged": True}

    rec.responder = staticmethod(respond)
    store = make_store(bulk_batch=2)
    store.rebuild("docs", (rec_(i) for i in range(3)), model="m", dim=3)
    methods_urls = [(m, u.split("?")[0]) for m, u, _, _ in rec.calls]
    new = "agentflow-rag-docs-1700000000123"
    assert methods_urls == [
        ("PUT", f"/{new}"),
        ("POST", "/_bulk"),
        ("POST", "/_bulk"),
        ("POST", f"/{new}/_refresh"),
        ("GET", "/_alias/agentflow-rag-docs"),
        ("POST", "/_aliases"),
        ("DELETE", "/agentflow-rag-docs-1"),
    ]
    assert [len(c[3]) for c in rec.calls[1:3]] == [4, 2]
    assert rec.calls[1][3][0] == {"index": {"_index": new, "_id": "id0"}}  # writes go to the new index only
    assert rec.calls[5][3] == {
        "actions": [
            {"remove": {"index": "agentflow-rag-docs-1", "alias": "agentflow-rag-docs"}},
            {"add": {"index": new, "alias": "agentflow-rag-docs", "is_write_index": True}},
        ]
    }


def _hits(*ids: str) -> dict[str, Any]:
    src = {"document": "docs/a.md", "version": "v1", "ordinal": 0, "start": 0, "end": 5, "text": "t",
           "metadata": {"ext": "md"}}  # fmt: skip
    return {"hits": {"hits": [{"_id": i, "_score": 0.9, "_source": src} for i in ids]}}


def test_hybrid_search_is_one_msearch_with_knn_and_bm25_fused_by_rrf(rec: type[RecordingConnection]) -> None:
    rec.responder = staticmethod(
        lambda m, u, b: (200, {"responses": [_hits("a", "b", "c"), _hits("c", "d")]})
    )
    store = make_store()
    flt = SearchFilter(documents=["docs/a.md"], metadata={"ext": "md"})
    hits = store.search("docs", vector=[0.1, 0.2, 0.3], text="pulsar beams", k=3, filters=flt)
    method, url, _, body = rec.calls[0]
    filters = [
        {"term": {"collection": "docs"}},
        {"terms": {"document": ["docs/a.md"]}},
        {"term": {"metadata.ext": "md"}},
    ]
    assert (method, url.split("?")[0]) == ("POST", "/_msearch")
    assert body == [
        {"index": "agentflow-rag-docs"},
        {"size": 12, "_source": {"excludes": ["embedding"]},
         "query": {"knn": {"embedding": {"vector": [0.1, 0.2, 0.3], "k": 12,
                                         "filter": {"bool": {"filter": filters}}}}}},
        {"index": "agentflow-rag-docs"},
        {"size": 12, "_source": {"excludes": ["embedding"]},
         "query": {"bool": {"must": [{"match": {"text": {"query": "pulsar beams"}}}], "filter": filters}}},
    ]  # fmt: skip
    # c is 3rd by k-NN and 1st by BM25: 1/63 + 1/61 beats a's 1/61.
    assert [h.chunk_id for h in hits] == ["c", "a", "b"]
    assert hits[0].score == pytest.approx(1 / 63 + 1 / 61) and (hits[0].vector_rank, hits[0].text_rank) == (
        3,
        1,
    )


def test_vector_mode_reports_cosine(rec: type[RecordingConnection]) -> None:
    rec.responder = staticmethod(lambda m, u, b: (200, {"responses": [_hits("a")]}))
    hits = make_store().search("docs", vector=[1.0, 0.0, 0.0], text="ignored", k=1, mode="vector")
    assert len(rec.calls[0][3]) == 2 and "knn" in rec.calls[0][3][1]["query"]
    assert hits[0].score == pytest.approx(0.8)  # the plugin's (1 + cos) / 2 = 0.9


def test_resource_builds_an_opensearch_store() -> None:
    store = VectorStoreResource(
        backend="opensearch", opensearch_url="http://localhost:1", engine="faiss"
    ).build()
    assert isinstance(store, OpenSearchVectorStore) and store.engine == "faiss"
    with pytest.raises(ValueError, match="needs opensearch_url"):
        VectorStoreResource(backend="opensearch").build()


# -- live cluster -----------------------------------------------------------------------------------------

OPENSEARCH_URL = os.environ.get("AGENTFLOW_OPENSEARCH_URL")


@pytest.mark.skipif(not OPENSEARCH_URL, reason="AGENTFLOW_OPENSEARCH_URL is not set")
def test_live_cluster_apply_search_rebuild_drop() -> None:
    store = VectorStoreResource(
        backend="opensearch",
        opensearch_url=OPENSEARCH_URL or "",
        index_prefix=f"agentflow-test-{uuid.uuid4().hex[:6]}",
    ).build()
    assert isinstance(store, OpenSearchVectorStore)
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(40, 8))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    recs = [
        VectorRecord(
            f"c{i}",
            f"live/d{i % 2}.txt",
            "v1",
            i,
            0,
            5,
            f"word{i} shared",
            vecs[i].tolist(),
            {"n": str(i % 2)},
        )
        for i in range(40)
    ]
    try:
        first = store.apply("live", recs, [], model="m", dim=8)
        assert store.count("live") == 40 and store.info("live") == first
        assert store.search("live", vector=recs[7].vector, text=None, k=1, mode="vector")[0].chunk_id == "c7"
        assert store.search("live", vector=None, text="word12", k=1, mode="text")[0].chunk_id == "c12"
        flt = SearchFilter(documents=["live/d1.txt"])
        assert all(
            h.document == "live/d1.txt"
            for h in store.search("live", vector=recs[0].vector, text="shared", k=5, filters=flt)
        )
        store.apply("live", [], ["c0", "c1"], model="m", dim=8)
        assert store.count("live") == 38 and len(store.fingerprints("live")) == 38
        time.sleep(0.01)
        second = store.rebuild("live", recs[:10], model="m", dim=8)
        assert second.name != first.name and store.count("live") == 10
    finally:
        store.drop("live")
        store.close()
