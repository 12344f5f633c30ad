"""raw_documents -> document_chunks -> chunk_embeddings -> rag_index, one partition per collection."""

from typing import Any

import dagster as dg

from agentflow_dagster import names
from agentflow_dagster.rag.chunking import Chunker
from agentflow_dagster.rag.pipeline import (
    EmbedStats,
    chunk_documents,
    embed_chunks,
    index_chunks,
    sync_documents,
)
from assets.rag.partitions import collections_partitions
from resources.embeddings import EmbeddingsResource
from resources.object_store import ObjectStoreResource
from resources.postgres import PostgresResource
from resources.vector_store import VectorStoreResource

TAG_TRIGGER = "agentflow/trigger"
MAX_LISTED = 200  # metadata lists are capped so a large collection does not bloat the event log

# Every rag asset is safe to re-run: each step writes in one transaction (or builds a new index and
# swaps it in), keyed by content, so a retried attempt redoes only what the failed one rolled back.
# Waits of about 2, 6 and 14 s (each +-2 s): an object store or Postgres restart of up to ~20 s is
# absorbed by the same run; a longer outage fails the run, and the next event or the nightly
# schedule re-materializes.
RAG_RETRY_POLICY = dg.RetryPolicy(
    max_retries=3, delay=2.0, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


class ChunkingConfig(dg.Config):
    chunk_size: int = 200  # tokens of the embedding model (all-MiniLM-L6-v2 reads at most 256)
    chunk_overlap: int = 40


class IndexConfig(dg.Config):
    rebuild: bool = False  # write a fresh index and swap it in, instead of upserting the changes


def _run_metadata(context: dg.AssetExecutionContext) -> dict[str, Any]:
    tags = context.run.tags
    return {
        "collection": context.partition_key,
        "run_id": context.run_id,
        "event_id": tags.get(names.TAG_EVENT_ID, ""),
        "trigger": tags.get(TAG_TRIGGER, "manual"),
    }


def _capped(items: dict[str, str]) -> dict[str, str]:
    return dict(sorted(items.items())[:MAX_LISTED])


@dg.asset(
    group_name="rag",
    partitions_def=collections_partitions,
    retry_policy=RAG_RETRY_POLICY,
    kinds={"s3", "postgres"},
    description="Objects under agentflow-documents/<collection>/ parsed to text (txt, md, html, pdf).",
)
def raw_documents(
    context: dg.AssetExecutionContext, object_store: ObjectStoreResource, postgres: PostgresResource
) -> dg.MaterializeResult:
    stats = sync_documents(postgres.engine, object_store.store, context.partition_key, context.run_id)
    for key, error in stats.failed.items():
        context.log.warning(f"could not parse {names.BUCKET_DOCUMENTS}/{key}: {error}")
    return dg.MaterializeResult(
        metadata={
            **_run_metadata(context),
            "documents": stats.documents,
            "added": stats.added,
            "updated": stats.updated,
            "deleted": stats.deleted,
            "unchanged": stats.unchanged,
            "bytes": stats.bytes_total,
            "bytes_parsed": stats.bytes_parsed,
            "failed": dg.MetadataValue.json(_capped(stats.failed)),
            "source_versions": dg.MetadataValue.json(_capped(stats.versions)),
        }
    )


@dg.asset(
    group_name="rag",
    partitions_def=collections_partitions,
    retry_policy=RAG_RETRY_POLICY,
    deps=[raw_documents],
    kinds={"langchain", "postgres"},
    description="Token-aware chunks of each document; chunk ids are content hashes.",
)
def document_chunks(
    context: dg.AssetExecutionContext,
    config: ChunkingConfig,
    postgres: PostgresResource,
    embeddings: EmbeddingsResource,
) -> dg.MaterializeResult:
    try:
        chunker = Chunker(config.chunk_size, config.chunk_overlap, embeddings.tokenizer_json)
    except ValueError as exc:  # a bad ChunkingConfig fails the same way every time: not retried
        raise dg.Failure(f"document_chunks config: {exc}", allow_retries=False) from exc
    stats = chunk_documents(postgres.engine, context.partition_key, chunker, context.run_id)
    return dg.MaterializeResult(
        metadata={
            **_run_metadata(context),
            "chunks": stats.chunks,
            "documents_chunked": stats.documents_chunked,
            "chunks_added": stats.added,
            "chunks_removed": stats.removed,
            "tokens": stats.tokens,
            "chunker": chunker.signature,
            "chunk_size": config.chunk_size,
            "chunk_overlap": config.chunk_overlap,
        }
    )


@dg.asset(
    group_name="rag",
    partitions_def=collections_partitions,
    retry_policy=RAG_RETRY_POLICY,
    deps=[document_chunks],
    kinds={"pytorch", "postgres"},
    description="An embedding per chunk, from a cache keyed by (model, content hash): text is embedded once.",
)
def chunk_embeddings(
    context: dg.AssetExecutionContext, postgres: PostgresResource, embeddings: EmbeddingsResource
) -> dg.MaterializeResult:
    def progress(done: int, total: int, stats: EmbedStats) -> None:
        # One log line and one observation per batch: the run's event log and the asset page show
        # how far a long embedding step is while it runs.
        context.log.info(f"embedded {done}/{total} chunk texts of {context.partition_key!r}")
        context.log_event(
            dg.AssetObservation(
                asset_key=context.asset_key,
                partition=context.partition_key,
                metadata={
                    "embedded": done,
                    "to_embed": total,
                    "percent": round(100.0 * done / total, 1) if total else 100.0,
                    "chunks_per_second": round(stats.chunks_per_second, 1),
                },
            )
        )

    stats = embed_chunks(
        postgres.engine, context.partition_key, embeddings.embedder, context.run_id, progress=progress
    )
    return dg.MaterializeResult(
        metadata={
            **_run_metadata(context),
            "chunks": stats.chunks,
            "embedded": stats.embedded,
            "cache_hits": stats.cache_hits,
            "embedding_model": embeddings.model_id,
            "dimension": stats.dimension,
            "seconds": round(stats.seconds, 3),
            "chunks_per_second": round(stats.chunks_per_second, 1),
            "embedded_chunk_ids": dg.MetadataValue.json(sorted(stats.embedded_chunk_ids)[:MAX_LISTED]),
        }
    )


@dg.asset(
    group_name="rag",
    partitions_def=collections_partitions,
    retry_policy=RAG_RETRY_POLICY,
    deps=[chunk_embeddings],
    kinds={"pgvector", "opensearch"},
    description="The collection's searchable index (HNSW + full text); rebuilds swap an alias atomically.",
)
def rag_index(
    context: dg.AssetExecutionContext,
    config: IndexConfig,
    postgres: PostgresResource,
    vector_store: VectorStoreResource,
    embeddings: EmbeddingsResource,
) -> dg.MaterializeResult:
    store = vector_store.store
    stats = index_chunks(
        postgres.engine, context.partition_key, store, embeddings.model_id, rebuild=config.rebuild
    )
    return dg.MaterializeResult(
        metadata={
            **_run_metadata(context),
            "backend": store.backend,
            "index_name": stats.index,
            "vectors": stats.vectors,
            "upserted": stats.upserted,
            "deleted": stats.deleted,
            "rebuilt": stats.rebuilt,
            "embedding_model": embeddings.model_id,
            "dimension": stats.dimension,
        }
    )


rag_assets = [raw_documents, document_chunks, chunk_embeddings, rag_index]
