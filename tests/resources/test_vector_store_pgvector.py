"""pgvector store on the session Postgres: incremental writes, hybrid search, filters, atomic rebuild swap."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import sqlalchemy as sa

from agentflow_dagster.rag.pgvector_store import PgVectorStore
from agentflow_dagster.rag.store import IndexMismatch, SearchFilter, VectorRecord, rrf_fuse
from resources.vector_store import VectorStoreResource

DIM = 16
WORDS = ["harbour crane", "glacier ice", "violin string", "copper wire", "olive grove", "desert dune"]


def records(n: int, version: str = "v1", seed: int = 0) -> list[VectorRecord]:
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(n, DIM))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return [
        VectorRecord(
            chunk_id=f"chunk-{i:04d}",
            document=f"c/doc{i % 3}.txt",
            version=version,
            ordinal=i,
            start=i * 10,
            end=i * 10 + 9,
            text=f"{WORDS[i % len(WORDS)]} passage {i}",
            vector=vecs[i].tolist(),
            metadata={"lang": "en" if i % 2 else "de", "ext": "txt"},
        )
        for i in range(n)
    ]


@pytest.fixture()
def store(pg_url: str) -> Iterator[PgVectorStore]:
    s = VectorStoreResource(backend="pgvector", postgres_url=pg_url).build()
    assert isinstance(s, PgVectorStore)
    yield s
    s.close()


@pytest.fixture()
def collection(store: PgVectorStore) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:8]}"
    yield name
    store.drop(name)


def test_apply_creates_upserts_and_deletes_in_one_transaction(store: PgVectorStore, collection: str) -> None:
    recs = records(30)
    info = store.apply(collection, recs, [], model="m1", dim=DIM)
    assert store.count(collection) == 30 and store.info(collection) == info
    assert store.fingerprints(collection)["chunk-0003"] == "v1:3:30:39"
    moved = [VectorRecord(**{**r.__dict__, "version": "v2"}) for r in recs[:5]]
    store.apply(collection, moved, ["chunk-0029", "chunk-0028", "no-such-id"], model="m1", dim=DIM)
    assert store.count(collection) == 28
    assert store.document_versions(collection)["c/doc0.txt"] == {"v1", "v2"}
    assert store.stored_dims(collection) == {DIM}
    with pytest.raises(IndexMismatch, match="rebuild"):
        store.apply(collection, [], [], model="other-model", dim=DIM)


def test_vector_text_and_hybrid_search(store: PgVectorStore, collection: str) -> None:
    recs = records(60)
    store.apply(collection, recs, [], model="m1", dim=DIM)
    target = recs[17]
    vec = store.search(collection, vector=target.vector, text=None, k=3, mode="vector")
    assert vec[0].chunk_id == target.chunk_id and vec[0].score == pytest.approx(1.0, abs=1e-4)
    txt = store.search(collection, vector=None, text="glacier", k=20, mode="text")
    assert txt and all("glacier" in h.text for h in txt)
    # Hybrid = reciprocal rank fusion of the two candidate lists (4k each).
    hyb = store.search(collection, vector=target.vector, text="violin", k=5)
    by_vec = store.search(collection, vector=target.vector, text=None, k=20, mode="vector")
    by_txt = store.search(collection, vector=None, text="violin", k=20, mode="text")
    fused = rrf_fuse([[h.chunk_id for h in by_vec], [h.chunk_id for h in by_txt]])
    assert [h.chunk_id for h in hyb] == sorted(fused, key=lambda c: (-fused[c], c))[:5]
    assert [h.score for h in hyb] == pytest.approx(sorted(fused.values(), reverse=True)[:5])
    assert all(h.vector_rank or h.text_rank for h in hyb)
    assert hyb == sorted(hyb, key=lambda h: -h.score)


def test_filters_by_document_and_metadata(store: PgVectorStore, collection: str) -> None:
    recs = records(60)
    store.apply(collection, recs, [], model="m1", dim=DIM)
    flt = SearchFilter(documents=["c/doc1.txt"], metadata={"lang": "en"})
    hits = store.search(collection, vector=recs[0].vector, text="passage", k=10, filters=flt)
    assert len(hits) == 10
    assert all(h.document == "c/doc1.txt" and h.metadata["lang"] == "en" for h in hits)
    with pytest.raises(ValueError, match="metadata filter key"):
        SearchFilter(metadata={"x') OR 1=1 --": 1})


def test_exact_search_matches_numpy(store: PgVectorStore, collection: str) -> None:
    recs = records(200, seed=3)
    store.apply(collection, recs, [], model="m1", dim=DIM)
    q = np.asarray(recs[5].vector) + 0.3
    mat = np.asarray([r.vector for r in recs])
    expected = [recs[i].chunk_id for i in np.argsort(-(mat @ (q / np.linalg.norm(q))))[:10]]
    got = store.search(collection, vector=q.tolist(), text=None, k=10, mode="vector", exact=True)
    assert [h.chunk_id for h in got] == expected


def test_rebuild_swaps_atomically_and_queries_see_the_old_index_meanwhile(
    store: PgVectorStore, collection: str, pg_url: str
) -> None:
    old = store.apply(collection, records(20), [], model="m1", dim=DIM)
    halfway, release = threading.Event(), threading.Event()

    def slow_records() -> Iterator[VectorRecord]:
        new = records(50, version="v2", seed=1)
        yield from new[:25]
        halfway.set()
        assert release.wait(30)
        yield from new[25:]

    result: dict[str, object] = {}
    worker = threading.Thread(
        target=lambda: result.update(info=store.rebuild(collection, slow_records(), model="m1", dim=DIM))
    )
    worker.start()
    try:
        assert halfway.wait(30)
        # Mid-rebuild: the live index is still the complete old one.
        assert store.count(collection) == 20 and store.info(collection) == old
        hits = store.search(collection, vector=records(20)[4].vector, text="passage", k=3)
        assert hits[0].chunk_id == "chunk-0004" and hits[0].version == "v1"
    finally:
        release.set()
        worker.join(60)
    new = store.info(collection)
    assert new == result["info"] and new is not None and new.name != old.name
    assert store.count(collection) == 50 and store.document_versions(collection)["c/doc0.txt"] == {"v2"}
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": old.name}).scalar() is None
    # Different model: a rebuild is the way to switch.
    swapped = store.rebuild(collection, records(5, version="v3"), model="m2", dim=DIM)
    assert swapped.model == "m2" and store.count(collection) == 5


def test_failed_rebuild_leaves_the_live_index(store: PgVectorStore, collection: str) -> None:
    store.apply(collection, records(10), [], model="m1", dim=DIM)
    bad = [*records(3), VectorRecord("x", "c/x.txt", "v", 0, 0, 1, "x", [0.0] * (DIM - 1))]
    with pytest.raises(ValueError, match="dims"):
        store.rebuild(collection, bad, model="m1", dim=DIM)
    assert store.count(collection) == 10


def test_search_after_drop_and_recreate_with_another_dimension(store: PgVectorStore, collection: str) -> None:
    store.apply(collection, records(5), [], model="m1", dim=DIM)
    assert store.search(collection, vector=records(5)[0].vector, text=None, k=1, mode="vector")
    store.drop(collection)
    assert store.search(collection, vector=records(5)[0].vector, text="passage", k=1) == []
    small = [VectorRecord(**{**r.__dict__, "vector": list(r.vector)[:4]}) for r in records(5)]
    store.apply(collection, small, [], model="m4", dim=4)
    assert (
        store.search(collection, vector=small[2].vector, text=None, k=1, mode="vector")[0].chunk_id
        == "chunk-0002"
    )
