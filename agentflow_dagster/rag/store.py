"""The vector-store interface shared by the pgvector and OpenSearch implementations."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

T = TypeVar("T")
SearchMode = Literal["hybrid", "vector", "text"]
RRF_K = 60  # the constant from Cormack et al.; damps the weight of the very top ranks
_META_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


@dataclass(frozen=True)
class VectorRecord:
    """One chunk as stored in an index: provenance, text, metadata and its embedding."""

    chunk_id: str
    document: str
    version: str
    ordinal: int
    start: int
    end: int
    text: str
    vector: Sequence[float]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.version, self.ordinal, self.start, self.end)


def fingerprint(version: str, ordinal: int, start: int, end: int) -> str:
    """What must match for a stored chunk to be left alone (text and vector follow from chunk_id)."""
    return f"{version}:{ordinal}:{start}:{end}"


@dataclass(frozen=True)
class SearchFilter:
    """Restrict a search to some documents and/or chunks whose metadata has these exact values."""

    documents: Sequence[str] | None = None
    metadata: dict[str, str | int | float | bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in self.metadata:
            if not _META_KEY.match(key):
                raise ValueError(f"metadata filter key {key!r} must match {_META_KEY.pattern}")


@dataclass(frozen=True)
class StoreHit:
    chunk_id: str
    document: str
    version: str
    ordinal: int
    start: int
    end: int
    text: str
    metadata: dict[str, Any]
    score: float
    vector_rank: int | None = None
    text_rank: int | None = None
    # The physical index that served the hit (behind the alias at query time): lineage survives a rebuild.
    index: str | None = None


@dataclass(frozen=True)
class IndexInfo:
    """The live index of a collection: physical name behind the alias, its model and dimension."""

    collection: str
    name: str
    model: str
    dim: int


class VectorStore(Protocol):
    backend: str

    def info(self, collection: str) -> IndexInfo | None: ...
    def count(self, collection: str) -> int: ...
    def fingerprints(self, collection: str) -> dict[str, str]: ...
    def document_versions(self, collection: str) -> dict[str, set[str]]: ...
    def apply(
        self,
        collection: str,
        upserts: Sequence[VectorRecord],
        deletes: Sequence[str],
        *,
        model: str,
        dim: int,
    ) -> IndexInfo: ...
    def rebuild(
        self, collection: str, records: Iterable[VectorRecord], *, model: str, dim: int
    ) -> IndexInfo: ...
    def drop(self, collection: str) -> None: ...
    def search(
        self,
        collection: str,
        *,
        vector: Sequence[float] | None,
        text: str | None,
        k: int,
        filters: SearchFilter | None = None,
        mode: SearchMode = "hybrid",
        candidates: int | None = None,
    ) -> list[StoreHit]: ...
    def close(self) -> None: ...


def rrf_fuse(rankings: Sequence[Sequence[str]], k: int = RRF_K) -> dict[str, float]:
    """Reciprocal rank fusion: sum of 1/(k + rank) over the rankings an id appears in (ranks from 1)."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, chunk_id in enumerate(ranking, start=1):
            scores[chunk_id] = scores.get(chunk_id, 0.0) + 1.0 / (k + rank)
    return scores


class IndexMismatch(RuntimeError):
    """The live index was built with another embedding model or dimension: rebuild it."""


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of at most `size` items (itertools.batched arrives in Python 3.12)."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
