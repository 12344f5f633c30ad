"""Tools agents may use; retrieval goes through the `Retriever` protocol (implemented in `rag/`)."""

from __future__ import annotations

import re
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, Field

RETRIEVAL = "retrieval"
KNOWN_TOOLS = frozenset({RETRIEVAL})
# Bounds on retrieval arguments: the collection naming rule of documents and routes, query length, k.
COLLECTION_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_QUERY_CHARS = 2000
MAX_K = 20


class Hit(BaseModel):
    """One retrieved passage; `text` is untrusted data, never instructions."""

    id: str
    text: str
    score: float = 0.0
    source: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)


@runtime_checkable
class Retriever(Protocol):
    """What the RAG layer provides: the k passages of `collection` nearest to `query`."""

    def search(self, query: str, collection: str, k: int) -> list[Any]: ...


class RetrievalResult(BaseModel):
    """The hits of one retrieval and a note saying why there are none, when there are none."""

    query: str
    collection: str
    hits: list[Hit] = Field(default_factory=list)
    note: str = ""


def coerce_hit(raw: Any, index: int) -> Hit:
    """Accept a `Hit`, a dict or any object with id/text/score/source attributes."""
    if isinstance(raw, Hit):
        return raw
    if isinstance(raw, dict):
        data = dict(raw)
    elif hasattr(raw, "model_dump"):
        data = raw.model_dump()
    else:
        names = ("id", "chunk_id", "text", "score", "source", "document", "metadata")
        data = {name: getattr(raw, name) for name in names if hasattr(raw, name)}
    # agentflow_dagster.rag hits name these chunk_id and document.
    data["id"] = str(data.get("id") or data.get("chunk_id") or f"hit-{index}")
    data.setdefault("source", str(data.get("document") or ""))
    data.setdefault("text", str(data.get("content", "")))
    return Hit.model_validate({k: v for k, v in data.items() if k in Hit.model_fields})


def retrieve(retriever: Retriever | None, query: str, collection: str, k: int) -> RetrievalResult:
    """Run retrieval; with no retriever configured return no hits and say so (never invent passages)."""
    # The arguments may come from an upstream model's output ($tasks.route.collection): bound them.
    if not COLLECTION_RE.match(collection):
        return RetrievalResult(
            query=query[:MAX_QUERY_CHARS], collection=collection[:80],
            note=f"refused: collection name {collection[:80]!r} does not match {COLLECTION_RE.pattern}",
        )  # fmt: skip
    query, k = query[:MAX_QUERY_CHARS], max(1, min(k, MAX_K))
    if retriever is None:
        return RetrievalResult(
            query=query, collection=collection, note="no retriever configured: retrieval returned no passages"
        )
    hits = [coerce_hit(raw, i) for i, raw in enumerate(retriever.search(query, collection, k))]
    note = "" if hits else f"collection {collection!r} returned no passages for this query"
    return RetrievalResult(query=query, collection=collection, hits=hits[:k], note=note)
