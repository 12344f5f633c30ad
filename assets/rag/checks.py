"""Asset checks of a collection's chunks and index: counts, dimensions, empty chunks, a retrieval probe."""

import warnings

import dagster as dg
import sqlalchemy as sa

from agentflow_dagster.rag.pipeline import cached_dimension
from agentflow_dagster.rag.retriever import Retriever
from assets.rag.assets import document_chunks, rag_index
from assets.rag.partitions import collections_partitions
from resources.embeddings import EmbeddingsResource
from resources.postgres import PostgresResource
from resources.vector_store import VectorStoreResource

# Per-partition checks are a preview API in Dagster 1.13; they are what makes a check run per collection.
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec")

PROBES = 3
PROBE_K = 5
PROBE_WORDS = 24


def _chunk_count(postgres: PostgresResource, collection: str) -> int:
    with postgres.engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT count(*) FROM rag_chunks WHERE collection = :c"), {"c": collection}
            ).scalar_one()
        )


@dg.asset_check(asset=document_chunks, partitions_def=collections_partitions, blocking=True)
def no_empty_chunks(
    context: dg.AssetCheckExecutionContext, postgres: PostgresResource
) -> dg.AssetCheckResult:
    """Every chunk has non-blank text (blank chunks embed to noise and crowd out real hits)."""
    with postgres.engine.connect() as conn:
        empty = (
            conn.execute(
                sa.text(
                    "SELECT chunk_id FROM rag_chunks WHERE collection = :c AND btrim(text) = '' LIMIT 20"
                ),
                {"c": context.partition_key},
            )
            .scalars()
            .all()
        )
    return dg.AssetCheckResult(
        passed=not empty, metadata={"empty_chunks": len(empty), "examples": list(empty)}
    )


@dg.asset_check(asset=rag_index, partitions_def=collections_partitions)
def vectors_match_chunks(
    context: dg.AssetCheckExecutionContext, postgres: PostgresResource, vector_store: VectorStoreResource
) -> dg.AssetCheckResult:
    """The index holds exactly one vector per chunk."""
    chunks = _chunk_count(postgres, context.partition_key)
    vectors = vector_store.store.count(context.partition_key)
    return dg.AssetCheckResult(passed=chunks == vectors, metadata={"chunks": chunks, "vectors": vectors})


@dg.asset_check(asset=rag_index, partitions_def=collections_partitions)
def dimensions_match_model(
    context: dg.AssetCheckExecutionContext,
    postgres: PostgresResource,
    vector_store: VectorStoreResource,
    embeddings: EmbeddingsResource,
) -> dg.AssetCheckResult:
    """The index and the cached vectors have the embedding model's dimension."""
    collection = context.partition_key
    info = vector_store.store.info(collection)
    model_dim = embeddings.dimension
    cached = cached_dimension(postgres.engine, collection, embeddings.model_id)
    index_dim = info.dim if info else None
    passed = info is None or (index_dim == model_dim and cached in (None, model_dim))
    return dg.AssetCheckResult(
        passed=passed,
        metadata={
            "model": embeddings.model_id,
            "model_dimension": model_dim,
            "index_dimension": index_dim or 0,
            "cached_dimension": cached or 0,
            "index_model": info.model if info else "",
        },
    )


@dg.asset_check(asset=rag_index, partitions_def=collections_partitions)
def retrieval_probe(
    context: dg.AssetCheckExecutionContext,
    postgres: PostgresResource,
    vector_store: VectorStoreResource,
    embeddings: EmbeddingsResource,
) -> dg.AssetCheckResult:
    """The opening words of a few chunks, used as queries, find their own document in the top k."""
    collection = context.partition_key
    with postgres.engine.connect() as conn:
        probes = conn.execute(
            sa.text(
                "SELECT chunk_id, document, text FROM rag_chunks WHERE collection = :c"
                " ORDER BY content_hash LIMIT :n"
            ),
            {"c": collection, "n": PROBES},
        ).all()
    if not probes:
        return dg.AssetCheckResult(passed=True, metadata={"probes": 0, "note": "empty collection"})
    retriever = Retriever(embeddings.embedder, vector_store.store)
    misses: dict[str, str] = {}
    for p in probes:
        query = " ".join(p.text.split()[:PROBE_WORDS])
        found = [h.document for h in retriever.search(query, collection, PROBE_K)]
        if p.document not in found:
            misses[p.chunk_id] = f"{p.document} not in top {PROBE_K} for {query[:80]!r}"
    return dg.AssetCheckResult(
        passed=not misses,
        metadata={"probes": len(probes), "misses": dg.MetadataValue.json(misses), "k": PROBE_K},
    )


rag_checks = [no_empty_chunks, vectors_match_chunks, dimensions_match_model, retrieval_probe]
