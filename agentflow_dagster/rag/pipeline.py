"""The RAG steps behind the assets: objects -> rag_documents -> rag_chunks -> embedding cache -> index."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import sqlalchemy as sa

from agentflow_dagster.names import BUCKET_DOCUMENTS
from agentflow_dagster.rag.chunking import Chunker
from agentflow_dagster.rag.embedders import Embedder
from agentflow_dagster.rag.parsers import parse_document
from agentflow_dagster.rag.store import VectorRecord, VectorStore, batches, fingerprint
from resources.object_store import ObjectStore


def _lock(conn: sa.Connection, collection: str, step: str) -> None:
    # Two runs of one collection (an event and the nightly schedule) must not interleave a step.
    key = int.from_bytes(hashlib.sha256(f"rag:{step}:{collection}".encode()).digest()[:8], "big", signed=True)
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


@dataclass
class DocumentStats:
    documents: int = 0
    added: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    bytes_total: int = 0
    bytes_parsed: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)


def sync_documents(
    engine: sa.Engine, objects: ObjectStore, collection: str, run_id: str | None
) -> DocumentStats:
    """Parse new and changed objects under `<collection>/`, forget deleted ones."""
    objects.ensure_bucket(BUCKET_DOCUMENTS)
    listing = {o.key: o for o in objects.list(BUCKET_DOCUMENTS, f"{collection}/")}
    stats = DocumentStats(documents=len(listing))
    with engine.begin() as conn:
        _lock(conn, collection, "documents")
        known: dict[str, str] = dict(
            conn.execute(
                sa.text("SELECT key, version FROM rag_documents WHERE collection = :c"), {"c": collection}
            ).all()
        )
        gone = sorted(set(known) - set(listing))
        if gone:
            conn.execute(
                sa.text("DELETE FROM rag_documents WHERE collection = :c AND key = ANY(:keys)"),
                {"c": collection, "keys": gone},
            )
        stats.deleted = len(gone)
        for key, obj in sorted(listing.items()):
            stats.bytes_total += obj.size
            stats.versions[key] = obj.version
            if known.get(key) == obj.version:
                stats.unchanged += 1
                continue
            data = objects.get(BUCKET_DOCUMENTS, key)
            stats.bytes_parsed += len(data)
            error = None
            try:
                parsed = parse_document(key, data)
                text, title, ctype = parsed.text, parsed.title, parsed.content_type
            except Exception as exc:
                # One broken file must not block its collection: it is recorded and indexed as empty.
                error = f"{type(exc).__name__}: {exc}"[:500]
                text, title, ctype = "", "", "application/octet-stream"
                stats.failed[key] = error
            conn.execute(
                sa.text(
                    "INSERT INTO rag_documents (collection, key, version, size, content_type, title, text,"
                    " error, run_id, updated_at) VALUES (:c, :k, :v, :s, :ct, :t, :x, :e, :r, now())"
                    " ON CONFLICT (collection, key) DO UPDATE SET version = EXCLUDED.version,"
                    " size = EXCLUDED.size, content_type = EXCLUDED.content_type, title = EXCLUDED.title,"
                    " text = EXCLUDED.text, error = EXCLUDED.error, run_id = EXCLUDED.run_id,"
                    " updated_at = now()"
                ),
                {
                    "c": collection,
                    "k": key,
                    "v": obj.version,
                    "s": obj.size,
                    "ct": ctype,
                    "t": title,
                    "x": text.replace("\x00", ""),
                    "e": error,
                    "r": run_id,
                },
            )
            if key in known:
                stats.updated += 1
            else:
                stats.added += 1
    return stats


@dataclass
class ChunkStats:
    chunks: int = 0
    documents_chunked: int = 0
    added: int = 0
    removed: int = 0
    tokens: int = 0
    empty: int = 0


def chunk_documents(engine: sa.Engine, collection: str, chunker: Chunker, run_id: str | None) -> ChunkStats:
    """Re-chunk documents whose version or chunker changed; drop chunks of deleted documents."""
    stats = ChunkStats()
    sig = chunker.signature
    with engine.begin() as conn:
        _lock(conn, collection, "chunks")
        removed = conn.execute(
            sa.text(
                "DELETE FROM rag_chunks c WHERE c.collection = :c AND NOT EXISTS"
                " (SELECT 1 FROM rag_documents d WHERE d.collection = c.collection AND d.key = c.document)"
            ),
            {"c": collection},
        ).rowcount
        stats.removed += removed
        todo = conn.execute(
            sa.text(
                "SELECT key, version, text FROM rag_documents WHERE collection = :c"
                " AND (chunked_version IS DISTINCT FROM version OR chunker IS DISTINCT FROM :sig)"
                " ORDER BY key"
            ),
            {"c": collection, "sig": sig},
        ).all()
        for doc in todo:
            chunks = chunker.split(collection, doc.key, doc.text)
            old = set(
                conn.execute(
                    sa.text(
                        "DELETE FROM rag_chunks WHERE collection = :c AND document = :d RETURNING chunk_id"
                    ),
                    {"c": collection, "d": doc.key},
                ).scalars()
            )
            new = {c.chunk_id for c in chunks}
            stats.added += len(new - old)
            stats.removed += len(old - new)
            if chunks:
                conn.execute(
                    sa.text(
                        "INSERT INTO rag_chunks (collection, chunk_id, document, version, ordinal,"
                        " start_offset, end_offset, content_hash, n_tokens, text, run_id)"
                        " VALUES (:c, :id, :d, :v, :o, :s, :e, :h, :n, :t, :r)"
                    ),
                    [
                        {
                            "c": collection,
                            "id": ch.chunk_id,
                            "d": doc.key,
                            "v": doc.version,
                            "o": ch.ordinal,
                            "s": ch.start,
                            "e": ch.end,
                            "h": ch.content_hash,
                            "n": ch.n_tokens,
                            "t": ch.text,
                            "r": run_id,
                        }
                        for ch in chunks
                    ],
                )
            conn.execute(
                sa.text(
                    "UPDATE rag_documents SET chunked_version = version, chunker = :sig"
                    " WHERE collection = :c AND key = :k"
                ),
                {"c": collection, "k": doc.key, "sig": sig},
            )
        stats.documents_chunked = len(todo)
        row = conn.execute(
            sa.text(
                "SELECT count(*), coalesce(sum(n_tokens), 0), count(*) FILTER (WHERE btrim(text) = '')"
                " FROM rag_chunks WHERE collection = :c"
            ),
            {"c": collection},
        ).one()
        stats.chunks, stats.tokens, stats.empty = int(row[0]), int(row[1]), int(row[2])
    return stats


@dataclass
class EmbedStats:
    chunks: int = 0
    embedded: int = 0
    cache_hits: int = 0
    dimension: int = 0
    seconds: float = 0.0
    embedded_chunk_ids: list[str] = field(default_factory=list)

    @property
    def chunks_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0


def embed_chunks(
    engine: sa.Engine,
    collection: str,
    embedder: Embedder,
    run_id: str | None,
    batch_size: int = 256,
    progress: Callable[[int, int, EmbedStats], None] | None = None,
) -> EmbedStats:
    """Embed only texts whose (model, content hash) is not cached; the cache is shared by all collections.

    `progress(done, total, stats)` is called after each committed batch (texts embedded of those missing).
    """
    model = embedder.model_id
    stats = EmbedStats()
    with engine.connect() as conn:
        stats.chunks = int(
            conn.execute(
                sa.text("SELECT count(*) FROM rag_chunks WHERE collection = :c"), {"c": collection}
            ).scalar_one()
        )
        missing = conn.execute(
            sa.text(
                "SELECT c.content_hash, min(c.text) AS text, array_agg(c.chunk_id) AS ids FROM rag_chunks c"
                " LEFT JOIN rag_embedding_cache e ON e.model = :m AND e.content_hash = c.content_hash"
                " WHERE c.collection = :c AND e.content_hash IS NULL GROUP BY c.content_hash"
                " ORDER BY c.content_hash"
            ),
            {"c": collection, "m": model},
        ).all()
    started = time.perf_counter()
    for batch in batches(missing, batch_size):
        vecs = embedder.embed([r.text for r in batch])
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO rag_embedding_cache (model, content_hash, dim, vector, run_id)"
                    " VALUES (:m, :h, :d, :v, :r) ON CONFLICT (model, content_hash) DO NOTHING"
                ),
                [
                    {
                        "m": model,
                        "h": r.content_hash,
                        "d": int(v.shape[0]),
                        "v": v.astype("<f4").tobytes(),
                        "r": run_id,
                    }
                    for r, v in zip(batch, vecs, strict=True)
                ],
            )
        stats.embedded += len(batch)
        stats.embedded_chunk_ids.extend(cid for r in batch for cid in r.ids)
        stats.dimension = int(vecs.shape[1])
        if progress is not None:
            stats.seconds = time.perf_counter() - started
            progress(stats.embedded, len(missing), stats)
    stats.seconds = time.perf_counter() - started
    stats.cache_hits = stats.chunks - len(stats.embedded_chunk_ids)
    if not stats.dimension:
        stats.dimension = cached_dimension(engine, collection, model) or 0
    return stats


def cached_dimension(engine: sa.Engine, collection: str, model: str) -> int | None:
    """Dimension of the collection's cached vectors, without loading the model."""
    with engine.connect() as conn:
        dims = (
            conn.execute(
                sa.text(
                    "SELECT DISTINCT e.dim FROM rag_chunks c JOIN rag_embedding_cache e ON e.model = :m"
                    " AND e.content_hash = c.content_hash WHERE c.collection = :c"
                ),
                {"c": collection, "m": model},
            )
            .scalars()
            .all()
        )
    if len(dims) > 1:
        raise RuntimeError(
            f"collection {collection!r} has cached vectors of several dimensions {dims} for {model}"
        )
    return int(dims[0]) if dims else None


@dataclass
class IndexStats:
    index: str = ""
    vectors: int = 0
    upserted: int = 0
    deleted: int = 0
    rebuilt: bool = False
    dimension: int = 0
    missing_embeddings: int = 0


_RECORD_SQL = (
    "SELECT c.chunk_id, c.document, c.version, c.ordinal, c.start_offset, c.end_offset, c.text,"
    " d.content_type, d.title, e.vector FROM rag_chunks c JOIN rag_documents d ON d.collection = c.collection"
    " AND d.key = c.document JOIN rag_embedding_cache e ON e.model = :m AND e.content_hash = c.content_hash"
    " WHERE c.collection = :c"
)


def _record(row: Any) -> VectorRecord:
    return VectorRecord(
        chunk_id=row.chunk_id,
        document=row.document,
        version=row.version,
        ordinal=row.ordinal,
        start=row.start_offset,
        end=row.end_offset,
        text=row.text,
        vector=np.frombuffer(row.vector, dtype="<f4").tolist(),
        metadata={
            "content_type": row.content_type,
            "title": row.title,
            "ext": PurePosixPath(row.document).suffix.lower().lstrip("."),
        },
    )


def index_chunks(
    engine: sa.Engine, collection: str, store: VectorStore, model: str, *, rebuild: bool = False
) -> IndexStats:
    """Bring the index to the chunk table: incremental upsert/delete, or a full rebuild and swap."""
    stats = IndexStats()
    with engine.connect() as conn:
        stats.missing_embeddings = int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM rag_chunks c LEFT JOIN rag_embedding_cache e ON e.model = :m"
                    " AND e.content_hash = c.content_hash WHERE c.collection = :c AND e.content_hash IS NULL"
                ),
                {"c": collection, "m": model},
            ).scalar_one()
        )
    if stats.missing_embeddings:
        raise RuntimeError(
            f"{stats.missing_embeddings} chunks of {collection!r} have no {model} embedding: "
            "materialize chunk_embeddings for this partition first"
        )
    dim = cached_dimension(engine, collection, model)
    info = store.info(collection)
    if info is None and dim is None:
        return stats  # nothing indexed, nothing to index
    if dim is None:
        assert info is not None
        dim = info.dim
    stats.dimension = dim
    if rebuild or info is None or info.model != model or info.dim != dim:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(_RECORD_SQL + " ORDER BY c.document, c.ordinal"), {"c": collection, "m": model}
            )
            records = [_record(r) for r in rows]
        new = store.rebuild(collection, records, model=model, dim=dim)
        stats.index, stats.rebuilt, stats.upserted = new.name, True, len(records)
        stats.vectors = store.count(collection)
        return stats
    existing = store.fingerprints(collection)
    with engine.connect() as conn:
        wanted = {
            r[0]: fingerprint(r[1], r[2], r[3], r[4])
            for r in conn.execute(
                sa.text(
                    "SELECT chunk_id, version, ordinal, start_offset, end_offset FROM rag_chunks"
                    " WHERE collection = :c"
                ),
                {"c": collection},
            )
        }
        changed = sorted(cid for cid, fp in wanted.items() if existing.get(cid) != fp)
        records = (
            [
                _record(r)
                for r in conn.execute(
                    sa.text(_RECORD_SQL + " AND c.chunk_id = ANY(:ids)"),
                    {"c": collection, "m": model, "ids": changed},
                )
            ]
            if changed
            else []
        )
    deletes = sorted(set(existing) - set(wanted))
    new = store.apply(collection, records, deletes, model=model, dim=dim)
    stats.index, stats.upserted, stats.deleted = new.name, len(records), len(deletes)
    stats.vectors = store.count(collection)
    return stats
