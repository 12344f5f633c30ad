"""Retrieval records: each search a task makes is a `retrievals` row naming the physical index it read."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agentflow_dagster.commands.purge import purge_history
from agentflow_dagster.db import make_engine
from agentflow_dagster.observability import tracing
from agentflow_dagster.observability.config import ObservabilitySettings
from agentflow_dagster.observability.llm_records import TracedRetriever, hit_record
from agentflow_dagster.rag.pgvector_store import PgVectorStore
from agentflow_dagster.rag.retriever import Retriever
from agentflow_dagster.rag.store import VectorRecord
from tests.workflows.test_audit import DIM, DOCS, HashEmbedder

QUERY = "refund the duplicate charge, mail jane.doe@example.com"


def _records(collection: str, version: str) -> list[VectorRecord]:
    vectors = HashEmbedder().embed(list(DOCS.values()))
    return [
        VectorRecord(f"{collection}-{name}-0", name, f"{version}-{name}", 0, 0, len(text), text, vectors[i])
        for i, (name, text) in enumerate(DOCS.items())
    ]


@pytest.fixture
def indexed(pg_url: str) -> Iterator[tuple[PgVectorStore, str]]:
    """A real pgvector index of the two test documents, dropped afterwards."""
    store = PgVectorStore(pg_url)
    collection = f"retr_{uuid.uuid4().hex[:8]}"
    store.rebuild(collection, _records(collection, "v1"), model=HashEmbedder.model_id, dim=DIM)
    yield store, collection
    store.drop(collection)
    store.close()


@pytest.fixture
def engine(pg_url: str) -> Iterator[sa.Engine]:
    eng = make_engine(pg_url)
    yield eng
    eng.dispose()


def _row(engine: sa.Engine, row_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT * FROM retrievals WHERE id = :i"), {"i": row_id}).one()


def test_row_names_the_physical_index_across_a_rebuild(
    engine: sa.Engine, indexed: tuple[PgVectorStore, str], spans: InMemorySpanExporter
) -> None:
    store, collection = indexed
    plan = f"plan-{uuid.uuid4().hex[:8]}"
    traced = TracedRetriever(
        Retriever(HashEmbedder(), store), plan, "retrieve", engine=engine, run_id="run-1", trace_id="ab" * 16
    )
    first_index = store.info(collection)
    assert first_index is not None
    hits = traced.search(QUERY, collection, 2)
    assert len(hits) == 2 and all(h.index == first_index.name for h in hits)

    row = _row(engine, traced.rows[0])
    assert (row.plan_id, row.task_id, row.run_id, row.collection, row.k) == (
        plan, "retrieve", "run-1", collection, 2
    )  # fmt: skip
    # The generation table behind the view, not the view the query named.
    assert row.index_name == first_index.name and row.index_name != store.view_name(collection)
    assert (row.backend, row.mode, row.embedding_model) == ("pgvector", "hybrid", "test-hash-16")
    assert row.latency_ms > 0 and row.error is None
    [span] = [sp for sp in spans.get_finished_spans() if sp.name == "retrieval"]
    assert (row.trace_id, row.span_id) == (f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}")
    assert span.attributes is not None and span.attributes["agentflow.retrieval.index"] == row.index_name
    assert "jane.doe@example.com" not in row.query and "[REDACTED:email]" in row.query
    assert row.redactions == {"email": 1} and row.content_mode == "redacted"
    assert [h["chunk_id"] for h in row.hits] == [h.chunk_id for h in hits]
    assert {h["document"]: h["version"] for h in row.hits} == {name: f"v1-{name}" for name in DOCS}
    top = row.hits[0]
    assert top["score"] == pytest.approx(hits[0].score) and (top["start"], top["end"]) == (
        hits[0].start, hits[0].end
    )  # fmt: skip
    assert "index" not in top  # only recorded per hit when it differs from the row's

    # A rebuild moves the alias to a new generation: the next search records it, the old row keeps its own.
    second_index = store.rebuild(collection, _records(collection, "v2"), model=HashEmbedder.model_id, dim=DIM)
    assert second_index.name != first_index.name
    traced.search(QUERY, collection, 1)
    later = _row(engine, traced.rows[1])
    assert later.index_name == second_index.name and later.hits[0]["version"].startswith("v2-")
    assert _row(engine, traced.rows[0]).index_name == first_index.name


def test_no_hits_records_the_live_index_and_a_failure_is_recorded_then_raised(
    engine: sa.Engine, indexed: tuple[PgVectorStore, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, collection = indexed
    plan = f"plan-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(tracing, "_provider", None)  # tracing off: the run's trace id from the request
    settings = ObservabilitySettings(llm_content_mode="none")
    traced = TracedRetriever(
        Retriever(HashEmbedder(), store, mode="text"), plan, "t", engine=engine, trace_id="ab" * 16,
        settings=settings,
    )  # fmt: skip
    assert traced.search("zzzqqq nothing matches", collection, 3) == []
    empty = _row(engine, traced.rows[0])
    live = store.info(collection)
    assert live is not None and empty.index_name == live.name and empty.hits == []
    assert empty.query is None and empty.content_mode == "none" and empty.mode == "text"
    assert (empty.trace_id, empty.span_id) == ("ab" * 16, None)

    class Broken:
        def search(self, query: str, collection: str, k: int) -> list[Any]:
            raise ConnectionError("vector store at http://u:secretpw@search:9200 unreachable")

    failing = TracedRetriever(Broken(), plan, "t", engine=engine)
    with pytest.raises(ConnectionError):
        failing.search("q", collection, 3)
    row = _row(engine, failing.rows[0])
    assert row.error.startswith("ConnectionError: ") and "secretpw" not in row.error
    assert row.hits == [] and row.index_name is None and row.backend is None


def test_generic_retriever_hits_and_no_engine() -> None:
    """A retriever resource returning agents-style dicts (id/source) still gives chunk and document."""

    class Plain:
        def search(self, query: str, collection: str, k: int) -> list[dict[str, Any]]:
            return [{"id": "c1", "text": "passage", "score": 0.5, "source": "doc.md"}]

    traced = TracedRetriever(Plain(), "plan-x", "t")  # no engine: a span only, no row
    assert traced.search("q", "kb", 1)[0]["id"] == "c1"
    assert traced.rows == [] and traced.context.texts == ["passage"]

    assert hit_record({"id": "c1", "score": 0.5, "source": "doc.md"}) == {
        "chunk_id": "c1", "document": "doc.md", "score": 0.5
    }  # fmt: skip


def test_purge_takes_a_plans_retrievals_with_it(engine: sa.Engine) -> None:
    plan = f"plan-{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO workflow_runs (plan_id, event_id, workflow, version, tenant, status, "
                "finished_at) VALUES (:p, :p, 'wf', '1', 'default', 'succeeded', :f)"
            ),
            {"p": plan, "f": datetime.now(UTC) - timedelta(days=40)},
        )
    TracedRetriever(_Fixed(), plan, "t", engine=engine).search("q", "kb", 1)
    counts = purge_history(engine, datetime.now(UTC) - timedelta(days=30))
    assert counts["retrievals"] >= 1
    with engine.connect() as conn:
        left = conn.execute(sa.text("SELECT count(*) FROM retrievals WHERE plan_id = :p"), {"p": plan})
        assert left.scalar_one() == 0


class _Fixed:
    def search(self, query: str, collection: str, k: int) -> list[dict[str, Any]]:
        return [{"chunk_id": "c1", "document": "d.md", "version": "v1", "score": 1.0}]
