"""OpenSearch implementation: a k-NN index per collection generation behind an alias swapped atomically."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

from opensearchpy import OpenSearch, helpers
from opensearchpy.exceptions import NotFoundError

from agentflow_dagster.rag.store import (
    IndexInfo,
    IndexMismatch,
    SearchFilter,
    SearchMode,
    StoreHit,
    VectorRecord,
    batches,
    fingerprint,
    rrf_fuse,
)

_SOURCE_EXCLUDES = {"excludes": ["embedding"]}
_INDEX_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,200}$")


class OpenSearchBulkError(RuntimeError):
    """Some bulk actions failed; the message names the first failures."""


class OpenSearchVectorStore:
    """`knn_vector` (HNSW) plus BM25 `text`; hybrid = k-NN and BM25 in one _msearch, fused by RRF."""

    backend = "opensearch"

    def __init__(
        self,
        client: OpenSearch,
        *,
        index_prefix: str = "agentflow-rag",
        engine: str = "lucene",
        space_type: str = "cosinesimil",
        hnsw_m: int = 16,
        hnsw_ef_construction: int = 128,
        ef_search: int = 100,
        shards: int = 1,
        replicas: int = 0,
        bulk_batch: int = 500,
        clock: Any = time.time,
    ):
        if not _INDEX_NAME.match(index_prefix):
            raise ValueError(f"index_prefix {index_prefix!r} must be a lowercase OpenSearch index name")
        self.client = client
        self.index_prefix = index_prefix
        self.engine = engine
        self.space_type = space_type
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construction = hnsw_ef_construction
        self.ef_search = ef_search
        self.shards = shards
        self.replicas = replicas
        self.bulk_batch = bulk_batch
        self._clock = clock

    # -- request bodies (pure, unit-tested) ---------------------------------------------------------

    def alias(self, collection: str) -> str:
        return f"{self.index_prefix}-{collection}"

    def new_index_name(self, collection: str) -> str:
        return f"{self.alias(collection)}-{int(self._clock() * 1000)}"

    def index_body(self, collection: str, model: str, dim: int) -> dict[str, Any]:
        """Settings and mapping of one collection generation; model and dim ride along in `_meta`."""
        return {
            "settings": {
                "index": {
                    "knn": True,
                    "knn.algo_param.ef_search": self.ef_search,
                    "number_of_shards": self.shards,
                    "number_of_replicas": self.replicas,
                }
            },
            "mappings": {
                "_meta": {"collection": collection, "model": model, "dim": dim},
                "dynamic_templates": [
                    {
                        "metadata_strings": {
                            "path_match": "metadata.*",
                            "match_mapping_type": "string",
                            "mapping": {"type": "keyword"},
                        }
                    }
                ],
                "properties": {
                    "embedding": {
                        "type": "knn_vector",
                        "dimension": dim,
                        "method": {
                            "name": "hnsw",
                            "engine": self.engine,
                            "space_type": self.space_type,
                            "parameters": {"m": self.hnsw_m, "ef_construction": self.hnsw_ef_construction},
                        },
                    },
                    "text": {"type": "text"},
                    "collection": {"type": "keyword"},
                    "chunk_id": {"type": "keyword"},
                    "document": {"type": "keyword"},
                    "version": {"type": "keyword"},
                    "ordinal": {"type": "integer"},
                    "start": {"type": "integer"},
                    "end": {"type": "integer"},
                    "metadata": {"type": "object", "dynamic": True},
                },
            },
        }

    def bulk_actions(
        self, index: str, collection: str, upserts: Sequence[VectorRecord], deletes: Sequence[str]
    ) -> list[dict[str, Any]]:
        """NDJSON lines for _bulk: index (full replace, so upsert) and delete by chunk id."""
        lines: list[dict[str, Any]] = []
        for chunk_id in deletes:
            lines.append({"delete": {"_index": index, "_id": chunk_id}})
        for r in upserts:
            lines.append({"index": {"_index": index, "_id": r.chunk_id}})
            lines.append(
                {
                    "chunk_id": r.chunk_id,
                    "collection": collection,
                    "document": r.document,
                    "version": r.version,
                    "ordinal": r.ordinal,
                    "start": r.start,
                    "end": r.end,
                    "text": r.text,
                    "metadata": r.metadata,
                    "embedding": [float(x) for x in r.vector],
                }
            )
        return lines

    @staticmethod
    def filter_clauses(collection: str, filters: SearchFilter | None) -> list[dict[str, Any]]:
        clauses: list[dict[str, Any]] = [{"term": {"collection": collection}}]
        if filters and filters.documents is not None:
            clauses.append({"terms": {"document": list(filters.documents)}})
        for key, value in (filters.metadata if filters else {}).items():
            clauses.append({"term": {f"metadata.{key}": value}})
        return clauses

    def knn_body(
        self, collection: str, vector: Sequence[float], n: int, filters: SearchFilter | None
    ) -> dict:
        """k-NN with the filter inside the knn clause, so the engine filters during the graph search."""
        return {
            "size": n,
            "_source": _SOURCE_EXCLUDES,
            "query": {
                "knn": {
                    "embedding": {
                        "vector": [float(x) for x in vector],
                        "k": n,
                        "filter": {"bool": {"filter": self.filter_clauses(collection, filters)}},
                    }
                }
            },
        }

    def bm25_body(self, collection: str, text: str, n: int, filters: SearchFilter | None) -> dict:
        return {
            "size": n,
            "_source": _SOURCE_EXCLUDES,
            "query": {
                "bool": {
                    "must": [{"match": {"text": {"query": text}}}],
                    "filter": self.filter_clauses(collection, filters),
                }
            },
        }

    def swap_actions(self, collection: str, new_index: str, old_indices: Sequence[str]) -> dict[str, Any]:
        """One _aliases request: remove the alias from old generations and add it to the new one."""
        alias = self.alias(collection)
        actions: list[dict[str, Any]] = [{"remove": {"index": old, "alias": alias}} for old in old_indices]
        actions.append({"add": {"index": new_index, "alias": alias, "is_write_index": True}})
        return {"actions": actions}

    # -- reads --------------------------------------------------------------------------------------

    def _alias_indices(self, collection: str) -> list[str]:
        try:
            return sorted(self.client.indices.get_alias(name=self.alias(collection)))
        except NotFoundError:
            return []

    def info(self, collection: str) -> IndexInfo | None:
        try:
            mappings = self.client.indices.get_mapping(index=self.alias(collection))
        except NotFoundError:
            return None
        for index, body in sorted(mappings.items()):
            meta = body.get("mappings", {}).get("_meta", {})
            return IndexInfo(collection, index, str(meta.get("model", "")), int(meta.get("dim", 0)))
        return None

    def count(self, collection: str) -> int:
        try:
            return int(self.client.count(index=self.alias(collection))["count"])
        except NotFoundError:
            return 0

    def fingerprints(self, collection: str) -> dict[str, str]:
        if self.info(collection) is None:
            return {}
        out: dict[str, str] = {}
        query = {"query": {"match_all": {}}, "_source": ["version", "ordinal", "start", "end"]}
        for hit in helpers.scan(self.client, query=query, index=self.alias(collection), size=1000):
            s = hit["_source"]
            out[hit["_id"]] = fingerprint(s["version"], s["ordinal"], s["start"], s["end"])
        return out

    def document_versions(self, collection: str) -> dict[str, set[str]]:
        """Which versions of which documents the live index holds."""
        if self.info(collection) is None:
            return {}
        out: dict[str, set[str]] = {}
        query = {"query": {"match_all": {}}, "_source": ["document", "version"]}
        for hit in helpers.scan(self.client, query=query, index=self.alias(collection), size=1000):
            out.setdefault(hit["_source"]["document"], set()).add(hit["_source"]["version"])
        return out

    # -- writes -------------------------------------------------------------------------------------

    def _bulk(self, lines: list[dict[str, Any]], refresh: str | bool) -> None:
        if not lines:
            return
        resp = self.client.bulk(body=lines, params={"refresh": str(refresh).lower()})
        if resp.get("errors"):
            failed = [
                item
                for item in resp.get("items", [])
                for op, res in item.items()
                if res.get("status", 200) >= 300 and not (op == "delete" and res.get("status") == 404)
            ]
            if failed:
                raise OpenSearchBulkError(f"{len(failed)} bulk actions failed, first: {failed[:3]}")

    def _create(self, index: str, collection: str, model: str, dim: int) -> None:
        self.client.indices.create(index=index, body=self.index_body(collection, model, dim))

    def apply(
        self,
        collection: str,
        upserts: Sequence[VectorRecord],
        deletes: Sequence[str],
        *,
        model: str,
        dim: int,
    ) -> IndexInfo:
        """Bulk upserts and deletes through the alias; refresh=wait_for so the next search sees them."""
        info = self.info(collection)
        if info is None:
            index = self.new_index_name(collection)
            self._create(index, collection, model, dim)
            self.client.indices.update_aliases(body=self.swap_actions(collection, index, []))
            info = IndexInfo(collection, index, model, dim)
        elif info.model != model or info.dim != dim:
            raise IndexMismatch(
                f"index {info.name} holds {info.model} ({info.dim} dims), not {model} ({dim} dims):"
                " rebuild it"
            )
        alias = self.alias(collection)
        self._bulk(self.bulk_actions(alias, collection, [], deletes), False)
        for batch in batches(upserts, self.bulk_batch):
            self._bulk(self.bulk_actions(alias, collection, batch, []), False)
        self.client.indices.refresh(index=alias)
        return info

    def rebuild(self, collection: str, records: Iterable[VectorRecord], *, model: str, dim: int) -> IndexInfo:
        """Fill a new index, refresh it, swap the alias in one _aliases call, then delete old indices."""
        index = self.new_index_name(collection)
        self._create(index, collection, model, dim)
        try:
            for batch in batches(records, self.bulk_batch):
                self._bulk(self.bulk_actions(index, collection, batch, []), False)
            self.client.indices.refresh(index=index)
        except BaseException:
            self.client.indices.delete(index=index, params={"ignore_unavailable": "true"})
            raise
        old = [i for i in self._alias_indices(collection) if i != index]
        self.client.indices.update_aliases(body=self.swap_actions(collection, index, old))
        for name in old:
            self.client.indices.delete(index=name, params={"ignore_unavailable": "true"})
        return IndexInfo(collection, index, model, dim)

    def drop(self, collection: str) -> None:
        for name in self._alias_indices(collection):
            self.client.indices.delete(index=name, params={"ignore_unavailable": "true"})

    # -- search -------------------------------------------------------------------------------------

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
    ) -> list[StoreHit]:
        """k-NN, BM25, or both in one _msearch with reciprocal rank fusion on the client."""
        if mode in ("hybrid", "vector") and vector is None:
            raise ValueError(f"mode={mode!r} needs a query vector")
        if mode == "hybrid" and not text:
            mode = "vector"
        if mode == "text" and not text:
            raise ValueError("mode='text' needs query text")
        n = max(k, candidates or 4 * k)
        alias = self.alias(collection)
        bodies: list[dict[str, Any]] = []
        if mode in ("hybrid", "vector") and vector is not None:
            bodies += [{"index": alias}, self.knn_body(collection, vector, n, filters)]
        if mode in ("hybrid", "text") and text:
            bodies += [{"index": alias}, self.bm25_body(collection, text, n, filters)]
        try:
            resp = self.client.msearch(body=bodies)
        except NotFoundError:
            return []
        results = []
        for r in resp["responses"]:
            if "error" in r:
                if r.get("status") == 404:
                    return []
                raise RuntimeError(f"OpenSearch search on {alias} failed: {r['error']}")
            results.append(r["hits"]["hits"])
        sources = {h["_id"]: h for hits in results for h in hits}
        rankings = [[h["_id"] for h in hits] for hits in results]
        if mode == "hybrid":
            scores = rrf_fuse(rankings)
            vec_rank = {cid: i for i, cid in enumerate(rankings[0], start=1)}
            text_rank = {cid: i for i, cid in enumerate(rankings[1], start=1)}
        else:
            scores = {h["_id"]: self._score(h["_score"], mode) for h in results[0]}
            ranks = {cid: i for i, cid in enumerate(rankings[0], start=1)}
            vec_rank, text_rank = (ranks, {}) if mode == "vector" else ({}, ranks)
        ordered = sorted(scores, key=lambda cid: (-scores[cid], cid))[:k]
        return [
            self._hit(sources[cid], scores[cid], vec_rank.get(cid), text_rank.get(cid)) for cid in ordered
        ]

    def _score(self, raw: float, mode: SearchMode) -> float:
        # The k-NN plugin maps cosine similarity to (1 + cos) / 2; report cosine like pgvector does.
        if mode == "vector" and self.space_type == "cosinesimil":
            return 2.0 * float(raw) - 1.0
        return float(raw)

    @staticmethod
    def _hit(h: dict[str, Any], score: float, vr: int | None, tr: int | None) -> StoreHit:
        s = h["_source"]
        return StoreHit(
            chunk_id=h["_id"],
            document=s["document"],
            version=s["version"],
            ordinal=int(s["ordinal"]),
            start=int(s["start"]),
            end=int(s["end"]),
            text=s["text"],
            metadata=dict(s.get("metadata") or {}),
            score=score,
            vector_rank=vr,
            text_rank=tr,
            index=h.get("_index"),  # the concrete index behind the alias that answered
        )

    def close(self) -> None:
        self.client.close()
