"""pgvector implementation: one table per collection generation behind a view that is swapped atomically."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from agentflow_dagster.db import make_engine
from agentflow_dagster.rag.store import (
    RRF_K,
    IndexInfo,
    IndexMismatch,
    SearchFilter,
    SearchMode,
    StoreHit,
    VectorRecord,
    batches,
    fingerprint,
)

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_COLUMNS = "chunk_id, document, version, ordinal, start_offset, end_offset, text, metadata, embedding"
# The alias row is read in the same statement as the view, so under one snapshot: a rebuild swaps both
# in one transaction, and the name returned is the table the rows came from.
_HIT_COLUMNS = (
    "c.chunk_id, c.document, c.version, c.ordinal, c.start_offset, c.end_offset, c.text, c.metadata,"
    " (SELECT table_name FROM rag_vector_indexes WHERE collection = :coll) AS index_name"
)
# HNSW on `vector` stops at 2000 dimensions; wider models are indexed as half precision.
_MAX_VECTOR_DIMS = 2000


def vector_literal(vector: Sequence[float]) -> str:
    """pgvector's text input format."""
    return "[" + ",".join(f"{float(x):.7g}" for x in vector) + "]"


def _lock_id(collection: str) -> int:
    return int.from_bytes(hashlib.sha256(f"rag:{collection}".encode()).digest()[:8], "big", signed=True)


class PgVectorStore:
    """Vectors, text and metadata in Postgres; HNSW (cosine) for k-NN and a tsvector GIN index for text."""

    backend = "pgvector"

    def __init__(
        self,
        url: str,
        *,
        hnsw_m: int = 16,
        hnsw_ef_construction: int = 64,
        ef_search: int = 100,
        text_config: str = "english",
        engine: sa.Engine | None = None,
    ):
        if not _IDENT.match(text_config):
            raise ValueError(f"text_config {text_config!r} is not a Postgres text search configuration name")
        self.engine = engine or make_engine(url, pool_size=4, max_overflow=4)
        sa.event.listen(self.engine, "connect", self._on_connect)
        # Searches run in autocommit: one round trip per query, no BEGIN/ROLLBACK, no idle transaction
        # that would hold up the view swap of a rebuild.
        self._reads = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._dims: dict[str, int] = {}
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construction = hnsw_ef_construction
        self.ef_search = ef_search
        self.text_config = text_config
        self._schema_ready = False

    def _on_connect(self, dbapi_conn: Any, _record: Any) -> None:
        # Session defaults, so a plain search needs no SET: relaxed_order keeps scanning the HNSW graph
        # until enough rows pass the filters (pgvector >= 0.8).
        cur = dbapi_conn.cursor()
        cur.execute(f"SET hnsw.ef_search = {int(self.ef_search)}; SET hnsw.iterative_scan = relaxed_order")
        cur.close()
        if not dbapi_conn.autocommit:
            dbapi_conn.commit()

    # -- schema -------------------------------------------------------------------------------------

    def ensure_schema(self) -> None:
        """Create the extension, the alias table and the generation sequence (idempotent)."""
        if self._schema_ready:
            return
        with self.engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(727275)"))
            conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS vector"))
            conn.execute(
                sa.text(
                    "CREATE TABLE IF NOT EXISTS rag_vector_indexes ("
                    " collection text PRIMARY KEY, view_name text NOT NULL, table_name text NOT NULL,"
                    " model text NOT NULL, dim integer NOT NULL, built_at timestamptz NOT NULL DEFAULT now())"
                )
            )
            conn.execute(sa.text("CREATE SEQUENCE IF NOT EXISTS rag_vector_generation_seq"))
        self._schema_ready = True

    @staticmethod
    def view_name(collection: str) -> str:
        """The stable name queries use; `rag_vec_<collection>` plus a hash so long names stay unique."""
        digest = hashlib.sha256(collection.encode()).hexdigest()[:8]
        return f"rag_vec_{collection[:40]}_{digest}"

    def _vtype(self, dim: int) -> tuple[str, str]:
        if dim <= _MAX_VECTOR_DIMS:
            return f"vector({dim})", "vector_cosine_ops"
        return f"halfvec({dim})", "halfvec_cosine_ops"

    def _create_table(self, conn: sa.Connection, table: str, dim: int) -> None:
        vtype, _ = self._vtype(dim)
        conn.execute(
            sa.text(
                f"CREATE TABLE {table} ("
                " chunk_id text PRIMARY KEY, document text NOT NULL, version text NOT NULL,"
                " ordinal integer NOT NULL, start_offset integer NOT NULL, end_offset integer NOT NULL,"
                " text text NOT NULL, metadata jsonb NOT NULL DEFAULT '{}'::jsonb,"
                f" embedding {vtype} NOT NULL,"
                f" tsv tsvector GENERATED ALWAYS AS (to_tsvector('{self.text_config}', text)) STORED)"
            )
        )

    def _create_indexes(self, conn: sa.Connection, table: str, dim: int) -> None:
        _, ops = self._vtype(dim)
        conn.execute(
            sa.text(
                f"CREATE INDEX {table}_hnsw ON {table} USING hnsw (embedding {ops})"
                f" WITH (m = {int(self.hnsw_m)}, ef_construction = {int(self.hnsw_ef_construction)})"
            )
        )
        conn.execute(sa.text(f"CREATE INDEX {table}_tsv ON {table} USING gin (tsv)"))
        conn.execute(sa.text(f"CREATE INDEX {table}_doc ON {table} (document)"))
        conn.execute(sa.text(f"CREATE INDEX {table}_meta ON {table} USING gin (metadata jsonb_path_ops)"))

    def _new_table_name(self, conn: sa.Connection, collection: str) -> str:
        gen = conn.execute(sa.text("SELECT nextval('rag_vector_generation_seq')")).scalar_one()
        return f"{self.view_name(collection)}_g{gen}"

    def _swap(self, conn: sa.Connection, collection: str, table: str, model: str, dim: int) -> str | None:
        """Point the view and alias row at `table` in the caller's transaction; returns the old table."""
        view = self.view_name(collection)
        old = conn.execute(
            sa.text("SELECT table_name FROM rag_vector_indexes WHERE collection = :c FOR UPDATE"),
            {"c": collection},
        ).scalar_one_or_none()
        conn.execute(sa.text(f"DROP VIEW IF EXISTS {view}"))
        conn.execute(sa.text(f"CREATE VIEW {view} AS SELECT * FROM {table}"))
        conn.execute(
            sa.text(
                "INSERT INTO rag_vector_indexes (collection, view_name, table_name, model, dim, built_at)"
                " VALUES (:c, :v, :t, :m, :d, now()) ON CONFLICT (collection) DO UPDATE SET"
                " view_name = EXCLUDED.view_name, table_name = EXCLUDED.table_name, model = EXCLUDED.model,"
                " dim = EXCLUDED.dim, built_at = EXCLUDED.built_at"
            ),
            {"c": collection, "v": view, "t": table, "m": model, "d": dim},
        )
        if old and old != table:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {old}"))
        return old

    # -- reads --------------------------------------------------------------------------------------

    def info(self, collection: str) -> IndexInfo | None:
        self.ensure_schema()
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.text("SELECT table_name, model, dim FROM rag_vector_indexes WHERE collection = :c"),
                {"c": collection},
            ).one_or_none()
        return IndexInfo(collection, row.table_name, row.model, row.dim) if row else None

    def count(self, collection: str) -> int:
        if self.info(collection) is None:
            return 0
        with self.engine.connect() as conn:
            return int(
                conn.execute(sa.text(f"SELECT count(*) FROM {self.view_name(collection)}")).scalar_one()
            )

    def fingerprints(self, collection: str) -> dict[str, str]:
        if self.info(collection) is None:
            return {}
        sql = f"SELECT chunk_id, version, ordinal, start_offset, end_offset FROM {self.view_name(collection)}"
        with self.engine.connect() as conn:
            return {r[0]: fingerprint(r[1], r[2], r[3], r[4]) for r in conn.execute(sa.text(sql))}

    def document_versions(self, collection: str) -> dict[str, set[str]]:
        """Which versions of which documents the live index holds."""
        if self.info(collection) is None:
            return {}
        out: dict[str, set[str]] = {}
        sql = f"SELECT DISTINCT document, version FROM {self.view_name(collection)}"
        with self.engine.connect() as conn:
            for doc, version in conn.execute(sa.text(sql)):
                out.setdefault(doc, set()).add(version)
        return out

    def stored_dims(self, collection: str) -> set[int]:
        """Distinct dimensions of the stored vectors (one value when the index is healthy)."""
        if self.info(collection) is None:
            return set()
        sql = f"SELECT DISTINCT vector_dims(embedding::vector) FROM {self.view_name(collection)}"
        with self.engine.connect() as conn:
            return {int(r[0]) for r in conn.execute(sa.text(sql))}

    # -- writes -------------------------------------------------------------------------------------

    def apply(
        self,
        collection: str,
        upserts: Sequence[VectorRecord],
        deletes: Sequence[str],
        *,
        model: str,
        dim: int,
    ) -> IndexInfo:
        """Upsert and delete in one transaction: readers see the index before or after, never between."""
        self.ensure_schema()
        with self.engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_id(collection)})
            row = conn.execute(
                sa.text("SELECT table_name, model, dim FROM rag_vector_indexes WHERE collection = :c"),
                {"c": collection},
            ).one_or_none()
            if row is None:
                table = self._new_table_name(conn, collection)
                self._create_table(conn, table, dim)
                self._create_indexes(conn, table, dim)
                self._swap(conn, collection, table, model, dim)
            elif row.model != model or row.dim != dim:
                raise IndexMismatch(
                    f"index of collection {collection!r} holds {row.model} ({row.dim} dims), not {model} "
                    f"({dim} dims): rebuild it (rag_index config rebuild: true)"
                )
            else:
                table = row.table_name
            if deletes:
                conn.execute(
                    sa.text(f"DELETE FROM {table} WHERE chunk_id = ANY(:ids)"), {"ids": list(deletes)}
                )
            if upserts:
                self._upsert(conn, table, upserts, dim)
        return IndexInfo(collection, table, model, dim)

    def _upsert(self, conn: sa.Connection, table: str, records: Sequence[VectorRecord], dim: int) -> None:
        vtype, _ = self._vtype(dim)
        stmt = sa.text(
            f"INSERT INTO {table} ({_COLUMNS}) VALUES (:chunk_id, :document, :version, :ordinal, :start,"
            f" :end, :text, CAST(:metadata AS jsonb), CAST(:embedding AS {vtype})) ON CONFLICT (chunk_id)"
            " DO UPDATE SET document = EXCLUDED.document, version = EXCLUDED.version,"
            " ordinal = EXCLUDED.ordinal, start_offset = EXCLUDED.start_offset,"
            " end_offset = EXCLUDED.end_offset, text = EXCLUDED.text, metadata = EXCLUDED.metadata,"
            " embedding = EXCLUDED.embedding"
        )
        for batch in batches(records, 500):
            conn.execute(stmt, [_params(r, dim) for r in batch])

    def rebuild(self, collection: str, records: Iterable[VectorRecord], *, model: str, dim: int) -> IndexInfo:
        """Load a new table, index it, then swap the view in one short transaction."""
        self.ensure_schema()
        with self.engine.begin() as conn:
            table = self._new_table_name(conn, collection)
            self._create_table(conn, table, dim)
        try:
            raw = self.engine.raw_connection()
            try:
                cur = raw.cursor()
                for batch in batches(records, 2000):
                    buf = io.StringIO()
                    writer = csv.writer(buf)
                    for r in batch:
                        p = _params(r, dim)
                        writer.writerow([p[c] for c in _CSV_ORDER])
                    buf.seek(0)
                    cur.copy_expert(f"COPY {table} ({_COLUMNS}) FROM STDIN WITH (FORMAT csv)", buf)
                raw.commit()
            finally:
                raw.close()
            with self.engine.begin() as conn:
                # Enough memory to build the HNSW graph in RAM; otherwise the build is many times slower.
                conn.execute(sa.text("SET LOCAL maintenance_work_mem = '512MB'"))
                self._create_indexes(conn, table, dim)
            with self.engine.begin() as conn:
                conn.execute(sa.text(f"ANALYZE {table}"))
            with self.engine.begin() as conn:
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_id(collection)})
                self._swap(conn, collection, table, model, dim)
        except BaseException:
            with self.engine.begin() as conn:
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
            raise
        return IndexInfo(collection, table, model, dim)

    def drop(self, collection: str) -> None:
        self.ensure_schema()
        with self.engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_id(collection)})
            table = conn.execute(
                sa.text("DELETE FROM rag_vector_indexes WHERE collection = :c RETURNING table_name"),
                {"c": collection},
            ).scalar_one_or_none()
            conn.execute(sa.text(f"DROP VIEW IF EXISTS {self.view_name(collection)}"))
            if table:
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))

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
        exact: bool = False,
    ) -> list[StoreHit]:
        """Top-k chunks: cosine k-NN, full text (ts_rank_cd), or both fused by reciprocal rank."""
        if mode in ("hybrid", "vector") and vector is None:
            raise ValueError(f"mode={mode!r} needs a query vector")
        if mode in ("hybrid", "text") and not text:
            if mode == "text":
                raise ValueError("mode='text' needs query text")
            mode = "vector"
        dim = self._dims.get(collection)
        if dim is None:
            info = self.info(collection)
            if info is None:
                return []
            dim = self._dims[collection] = info.dim
        n = max(k, candidates or 4 * k)
        vtype, _ = self._vtype(dim)
        where, params = self._where(filters)
        params.update(
            {
                "vec": vector_literal(vector) if vector is not None else None,
                "q": text or "",
                "k": k,
                "n": n,
                "rrf": RRF_K,
                "coll": collection,
            }
        )
        view = self.view_name(collection)
        tsq = (
            f"CAST(replace(CAST(plainto_tsquery('{self.text_config}', :q) AS text), ' & ', ' | ') AS tsquery)"
        )
        vec_ranked = (
            f"SELECT chunk_id, row_number() OVER (ORDER BY dist, chunk_id) AS r, dist FROM ("
            f" SELECT chunk_id, embedding <=> CAST(:vec AS {vtype}) AS dist FROM {view} c WHERE {where}"
            f" ORDER BY embedding <=> CAST(:vec AS {vtype}) LIMIT :n) s"
        )
        text_ranked = (
            f"SELECT chunk_id, row_number() OVER (ORDER BY rank DESC, chunk_id) AS r FROM ("
            f" SELECT chunk_id, ts_rank_cd(tsv, query, 1) AS rank FROM {view} c, {tsq} query"
            f" WHERE tsv @@ query AND {where} ORDER BY rank DESC LIMIT :n) s"
        )
        if mode == "vector":
            sql = (
                f"WITH v AS ({vec_ranked}) SELECT {_HIT_COLUMNS}, 1 - v.dist AS score, v.r AS vr,"
                f" NULL::bigint AS tr FROM v JOIN {view} c USING (chunk_id) ORDER BY v.r LIMIT :k"
            )
        elif mode == "text":
            sql = (
                f"WITH t AS ({text_ranked}) SELECT {_HIT_COLUMNS}, 1.0 / (:rrf + t.r) AS score,"
                f" NULL::bigint AS vr, t.r AS tr FROM t JOIN {view} c USING (chunk_id) ORDER BY t.r LIMIT :k"
            )
        else:
            sql = (
                f"WITH v AS ({vec_ranked}), t AS ({text_ranked}),"
                " f AS (SELECT coalesce(v.chunk_id, t.chunk_id) AS chunk_id, v.r AS vr, t.r AS tr,"
                " coalesce(1.0 / (:rrf + v.r), 0) + coalesce(1.0 / (:rrf + t.r), 0) AS score"
                " FROM v FULL OUTER JOIN t ON v.chunk_id = t.chunk_id)"
                f" SELECT {_HIT_COLUMNS}, f.score, f.vr, f.tr FROM f JOIN {view} c USING (chunk_id)"
                " ORDER BY f.score DESC, c.chunk_id LIMIT :k"
            )
        try:
            rows = self._run_search(sql, params, n, exact)
        except sa.exc.ProgrammingError:
            # The view is gone (collection dropped) or was rebuilt with another vector type: re-read it.
            self._dims.pop(collection, None)
            if self.info(collection) is None:
                return []
            return self.search(
                collection, vector=vector, text=text, k=k, filters=filters, mode=mode, candidates=candidates,
                exact=exact,
            )  # fmt: skip
        return [
            StoreHit(
                chunk_id=r.chunk_id,
                document=r.document,
                version=r.version,
                ordinal=r.ordinal,
                start=r.start_offset,
                end=r.end_offset,
                text=r.text,
                metadata=dict(r.metadata or {}),
                score=float(r.score),
                vector_rank=r.vr,
                text_rank=r.tr,
                index=r.index_name,
            )
            for r in rows
        ]

    def _run_search(self, sql: str, params: dict[str, Any], n: int, exact: bool) -> Sequence[Any]:
        if n <= self.ef_search and not exact:
            with self._reads.connect() as conn:
                return conn.execute(sa.text(sql), params).all()
        with self.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "SELECT set_config('hnsw.ef_search', :ef, true),"
                    " set_config('enable_indexscan', :idx, true)"
                ),
                {"ef": str(max(self.ef_search, n)), "idx": "off" if exact else "on"},
            )
            return conn.execute(sa.text(sql), params).all()

    @staticmethod
    def _where(filters: SearchFilter | None) -> tuple[str, dict[str, Any]]:
        clauses: list[str] = ["TRUE"]
        params: dict[str, Any] = {}
        if filters and filters.documents is not None:
            clauses.append("c.document = ANY(:docs)")
            params["docs"] = list(filters.documents)
        if filters and filters.metadata:
            clauses.append("c.metadata @> CAST(:meta AS jsonb)")
            params["meta"] = json.dumps(filters.metadata)
        return " AND ".join(clauses), params

    def close(self) -> None:
        self.engine.dispose()


_CSV_ORDER = ("chunk_id", "document", "version", "ordinal", "start", "end", "text", "metadata", "embedding")


def _params(r: VectorRecord, dim: int) -> dict[str, Any]:
    if len(r.vector) != dim:
        raise ValueError(
            f"chunk {r.chunk_id} of {r.document!r} has {len(r.vector)} dims, index expects {dim}"
        )
    return {
        "chunk_id": r.chunk_id,
        "document": r.document,
        "version": r.version,
        "ordinal": r.ordinal,
        "start": r.start,
        "end": r.end,
        "text": r.text,
        "metadata": json.dumps(r.metadata, sort_keys=True),
        "embedding": vector_literal(r.vector),
    }
