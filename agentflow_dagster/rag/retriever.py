"""Retriever: query text -> top-k chunks with scores and provenance, for agents and `agentflow search`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from agentflow_dagster.rag.embedders import Embedder
from agentflow_dagster.rag.store import SearchFilter, SearchMode, VectorStore


class Hit(BaseModel):
    """One retrieved chunk; `document`, `version`, `start` and `end` locate it in the source object."""

    chunk_id: str
    text: str
    score: float
    document: str
    version: str
    start: int
    end: int
    collection: str
    ordinal: int = 0
    metadata: dict[str, Any] = Field(default_factory=dict)
    vector_rank: int | None = None
    text_rank: int | None = None
    index: str | None = None  # the physical index searched (the alias resolved at query time)

    @property
    def provenance(self) -> dict[str, Any]:
        """What an agent records in its task output to cite this hit."""
        return {
            "collection": self.collection,
            "document": self.document,
            "version": self.version,
            "chunk_id": self.chunk_id,
            "start": self.start,
            "end": self.end,
        }


class Retriever:
    """Embeds the query once and searches the collection's live index (hybrid by default)."""

    def __init__(self, embedder: Embedder, store: VectorStore, mode: SearchMode = "hybrid"):
        self.embedder = embedder
        self.store = store
        self.mode = mode

    def search(
        self,
        query: str,
        collection: str,
        k: int = 5,
        *,
        filters: SearchFilter | None = None,
        mode: SearchMode | None = None,
    ) -> list[Hit]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        mode = mode or self.mode
        vector = self.embedder.embed([query])[0].tolist() if mode != "text" else None
        hits = self.store.search(collection, vector=vector, text=query, k=k, filters=filters, mode=mode)
        hits_out = []
        for h in hits:
            hit = Hit(
                chunk_id=h.chunk_id,
                text=h.text,
                score=h.score,
                document=h.document,
                version=h.version,
                start=h.start,
                end=h.end,
                collection=collection,
                ordinal=h.ordinal,
                metadata=h.metadata,
                vector_rank=h.vector_rank,
                text_rank=h.text_rank,
                index=h.index,
            )
            # Consumers that keep only `metadata` (agents' generic hit shape) still get the provenance.
            hit.metadata["provenance"] = hit.provenance
            hits_out.append(hit)
        return hits_out
