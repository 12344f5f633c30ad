"""End to end on real servers: corpus -> assets + checks -> search; update, delete, rebuild, search again."""

from __future__ import annotations

import uuid
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from agentflow_dagster import names
from agentflow_dagster.rag.chunking import Chunker
from agentflow_dagster.rag.retriever import Retriever
from assets.rag import COLLECTIONS, rag_assets, rag_checks
from tests.rag.corpus import KAFKA_MD, corpus

CHUNKING = {"chunk_size": 48, "chunk_overlap": 8}


def materialize(
    resources: dict[str, Any], instance: dg.DagsterInstance, collection: str, **index: Any
) -> Any:
    config = {"ops": {"document_chunks": {"config": CHUNKING}, "rag_index": {"config": index}}}
    result = dg.materialize(
        [*rag_assets, *rag_checks],
        partition_key=collection,
        resources=resources,
        instance=instance,
        run_config=config,
        tags={names.TAG_EVENT_ID: f"evt-{collection}"},
    )
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == dict.fromkeys(
        ["no_empty_chunks", "vectors_match_chunks", "dimensions_match_model", "retrieval_probe"], True
    )
    return result


def meta(result: Any, asset: str) -> dict[str, Any]:
    (mat,) = [
        e.materialization for e in result.get_asset_materialization_events() if e.asset_key.path == [asset]
    ]
    return {k: v.value for k, v in mat.metadata.items()}


@pytest.fixture()
def instance() -> Any:
    with dg.instance_for_test() as inst:
        yield inst


def test_ingest_query_update_delete_rebuild(
    rag_resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    collection = f"e2e_{uuid.uuid4().hex[:6]}"
    instance.add_dynamic_partitions(COLLECTIONS, [collection])
    objects = rag_resources["object_store"].store
    for name, data in corpus().items():
        objects.put(names.BUCKET_DOCUMENTS, f"{collection}/{name}", data)
    retriever = Retriever(rag_resources["embeddings"].embedder, rag_resources["vector_store"].store)

    def top_doc(query: str) -> str:
        return retriever.search(query, collection, 3)[0].document

    # 1. First materialization: everything parsed, chunked, embedded and indexed.
    first = materialize(rag_resources, instance, collection)
    docs, chunks, emb, idx = (
        meta(first, a) for a in ("raw_documents", "document_chunks", "chunk_embeddings", "rag_index")
    )
    assert docs["documents"] == docs["added"] == 4 and docs["failed"] == {}
    assert docs["event_id"] == f"evt-{collection}" and docs["run_id"] == first.run_id
    assert set(docs["source_versions"]) == {f"{collection}/{n}" for n in corpus()}
    assert emb["embedded"] + emb["cache_hits"] == chunks["chunks"] == idx["vectors"]
    assert emb["embedding_model"] == "local:all-MiniLM-L6-v2" and emb["dimension"] == idx["dimension"] == 384
    assert idx["backend"] == "pgvector" and idx["index_name"].startswith("rag_vec_e2e_")

    assert top_doc("how does the sensor avoid losing events?") == f"{collection}/kafka.md"
    assert top_doc("lava and ash from an eruption") == f"{collection}/volcano.txt"
    assert top_doc("wild yeast starter for bread") == f"{collection}/baking.html"
    assert top_doc("neutron stars emitting radiation") == f"{collection}/telescope.pdf"
    hit = retriever.search("pyroclastic flows", collection, 1)[0]
    with rag_resources["postgres"].engine.connect() as conn:
        text = conn.execute(
            sa.text("SELECT text FROM rag_documents WHERE collection = :c AND key = :k"),
            {"c": collection, "k": hit.document},
        ).scalar_one()
    assert text[hit.start : hit.end] == hit.text and hit.version == docs["source_versions"][hit.document]

    # 2. Nothing changed: nothing is parsed, re-chunked or embedded.
    again = materialize(rag_resources, instance, collection)
    assert meta(again, "raw_documents")["unchanged"] == 4
    assert meta(again, "document_chunks")["documents_chunked"] == 0
    assert meta(again, "chunk_embeddings")["embedded"] == 0
    assert (meta(again, "rag_index")["upserted"], meta(again, "rag_index")["deleted"]) == (0, 0)

    # 3. One paragraph of one document changes: only that document's changed chunks are embedded.
    key = f"{collection}/kafka.md"
    edited = KAFKA_MD.replace(
        "An event that cannot be parsed goes to the dead-letter topic with the reason it was rejected.",
        "Malformed events are quarantined in a separate topic so an operator can replay them after a fix.",
    )
    objects.put(names.BUCKET_DOCUMENTS, key, edited.encode())
    chunker = Chunker(CHUNKING["chunk_size"], CHUNKING["chunk_overlap"])
    old_ids = {c.chunk_id for c in chunker.split(collection, key, KAFKA_MD)}
    new_chunks = chunker.split(collection, key, edited)
    changed = {c.chunk_id for c in new_chunks} - old_ids
    assert 0 < len(changed) < len(new_chunks)
    upd = materialize(rag_resources, instance, collection)
    assert (meta(upd, "raw_documents")["updated"], meta(upd, "raw_documents")["unchanged"]) == (1, 3)
    emb = meta(upd, "chunk_embeddings")
    assert set(emb["embedded_chunk_ids"]) == changed and emb["embedded"] == len(changed)
    assert meta(upd, "rag_index")["deleted"] == len(old_ids - {c.chunk_id for c in new_chunks})
    hit = retriever.search("quarantined malformed events replayed by an operator", collection, 1)[0]
    assert hit.document == key and "quarantined" in hit.text
    assert hit.version == meta(upd, "raw_documents")["source_versions"][key]

    # 4. A deleted document disappears from the index.
    objects.delete(names.BUCKET_DOCUMENTS, f"{collection}/volcano.txt")
    gone = materialize(rag_resources, instance, collection)
    assert meta(gone, "raw_documents")["deleted"] == 1 and meta(gone, "chunk_embeddings")["embedded"] == 0
    hits = retriever.search("lava and ash from an eruption", collection, 10)
    assert hits and all(not h.document.endswith("volcano.txt") for h in hits)

    # 5. A full rebuild swaps in a new index with the same content and embeds nothing.
    before = meta(gone, "rag_index")
    rebuilt = materialize(rag_resources, instance, collection, rebuild=True)
    after = meta(rebuilt, "rag_index")
    assert after["rebuilt"] and after["index_name"] != before["index_name"]
    assert after["vectors"] == before["vectors"] and meta(rebuilt, "chunk_embeddings")["embedded"] == 0
    assert top_doc("wild yeast starter for bread") == f"{collection}/baking.html"


def test_same_text_in_another_collection_is_not_embedded_again(
    rag_resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    a, b = f"cache_a_{uuid.uuid4().hex[:6]}", f"cache_b_{uuid.uuid4().hex[:6]}"
    instance.add_dynamic_partitions(COLLECTIONS, [a, b])
    objects = rag_resources["object_store"].store
    text = b"Glaciers carve U-shaped valleys as they slowly grind over bedrock for thousands of years."
    objects.put(names.BUCKET_DOCUMENTS, f"{a}/ice.txt", text)
    objects.put(names.BUCKET_DOCUMENTS, f"{b}/ice.txt", text)
    first = meta(materialize(rag_resources, instance, a), "chunk_embeddings")
    second = meta(materialize(rag_resources, instance, b), "chunk_embeddings")
    assert first["embedded"] == 1 and second["embedded"] == 0 and second["cache_hits"] == 1
    ids = [
        Retriever(rag_resources["embeddings"].embedder, rag_resources["vector_store"].store)
        .search("glacier", c, 1)[0]
        .chunk_id
        for c in (a, b)
    ]
    assert ids[0] != ids[1]  # ids never collide across partitions


def test_unparseable_document_is_reported_not_fatal(
    rag_resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    c = f"broken_{uuid.uuid4().hex[:6]}"
    instance.add_dynamic_partitions(COLLECTIONS, [c])
    objects = rag_resources["object_store"].store
    objects.put(names.BUCKET_DOCUMENTS, f"{c}/ok.txt", b"Copper wire conducts electricity well.")
    objects.put(names.BUCKET_DOCUMENTS, f"{c}/bad.pdf", b"%PDF-1.4 this is not really a pdf")
    objects.put(names.BUCKET_DOCUMENTS, f"{c}/notes.docx", b"PK\x03\x04")
    result = materialize(rag_resources, instance, c)
    failed = meta(result, "raw_documents")["failed"]
    assert set(failed) == {f"{c}/bad.pdf", f"{c}/notes.docx"} and "docx" in failed[f"{c}/notes.docx"]
    assert meta(result, "rag_index")["vectors"] == 1


def test_nightly_schedule_requests_every_collection(instance: dg.DagsterInstance) -> None:
    from datetime import UTC, datetime

    from assets.rag import rag_index_job, rag_nightly_schedule

    instance.add_dynamic_partitions(COLLECTIONS, ["alpha", "beta"])
    when = datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=when) as context:
        requests = rag_nightly_schedule(context)
    assert isinstance(requests, list) and all(isinstance(r, dg.RunRequest) for r in requests)
    assert [(r.partition_key, r.run_key) for r in requests if isinstance(r, dg.RunRequest)] == [
        ("alpha", "rag-nightly-2026-01-02-alpha"),
        ("beta", "rag-nightly-2026-01-02-beta"),
    ]
    assert (
        rag_nightly_schedule.cron_schedule == "0 3 * * *"
        and rag_nightly_schedule.job_name == rag_index_job.name
    )
