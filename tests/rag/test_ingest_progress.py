"""Progress of long RAG work: per-batch callbacks, Dagster log events and observations per batch, and
the plain progress lines of `agentflow ingest --wait`, read from the pipeline's tables as it commits."""

from __future__ import annotations

import io
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from click.testing import CliRunner

from agentflow_dagster import names
from agentflow_dagster.cli import main
from agentflow_dagster.commands.progress import LiveProgress
from agentflow_dagster.commands.rag import ingest_progress
from agentflow_dagster.rag.pipeline import EmbedStats, embed_chunks
from agentflow_dagster.resources_env import build_resources
from agentflow_dagster.settings import get_settings
from assets.rag import COLLECTIONS, rag_assets


def _upload(resources: dict[str, Any], collection: str, n: int) -> dict[str, str | None]:
    """n small documents whose text is new to the shared embedding cache; key -> version."""
    store = resources["object_store"].store
    store.ensure_bucket(names.BUCKET_DOCUMENTS)
    expected: dict[str, str | None] = {}
    for i in range(n):
        words = " ".join(uuid.uuid4().hex[:8] for _ in range(30))
        key = f"{collection}/doc{i}.txt"
        expected[key] = store.put(
            names.BUCKET_DOCUMENTS, key, f"Document {i}: basalt, {words}.".encode()
        ).version
    return expected


def test_embedding_reports_each_batch(rag_resources: dict[str, Any]) -> None:
    collection = f"prog_{uuid.uuid4().hex[:6]}"
    _upload(rag_resources, collection, 5)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(COLLECTIONS, [collection])
        chunked = dg.materialize(
            rag_assets[:2], partition_key=collection, resources=rag_resources, instance=instance
        )
    assert chunked.success
    calls: list[tuple[int, int]] = []

    def progress(done: int, total: int, stats: EmbedStats) -> None:
        calls.append((done, total))

    engine = rag_resources["postgres"].engine
    stats = embed_chunks(engine, collection, rag_resources["embeddings"].embedder, None, 2, progress)
    assert stats.embedded == 5 and calls == [(2, 5), (4, 5), (5, 5)]


def test_ingest_progress_follows_the_steps_and_the_run_logs_each_batch(
    rag_resources: dict[str, Any],
) -> None:
    collection = f"prog_{uuid.uuid4().hex[:6]}"
    expected = _upload(rag_resources, collection, 3)
    engine = rag_resources["postgres"].engine
    model = rag_resources["embeddings"].model_id
    out = io.StringIO()
    with LiveProgress(f"ingest {collection}", "", stream=out) as bar:
        bar.update(*ingest_progress(engine, collection, expected, model))
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions(COLLECTIONS, [collection])
            parsed = dg.materialize(
                rag_assets[:1], partition_key=collection, resources=rag_resources, instance=instance
            )
            bar.update(*ingest_progress(engine, collection, expected, model))
            chunked = dg.materialize(
                rag_assets[1:2], partition_key=collection, resources=rag_resources, instance=instance
            )
            bar.update(*ingest_progress(engine, collection, expected, model))
            run = dg.materialize(
                rag_assets[2:3], partition_key=collection, resources=rag_resources, instance=instance
            )
            bar.update(*ingest_progress(engine, collection, expected, model))
            bar.update(*ingest_progress(engine, collection, expected, model))  # no change: no line
            logs = [e.user_message for e in instance.all_logs(run.run_id)]
    assert parsed.success and chunked.success and run.success
    # StringIO is no terminal: plain lines, one per change.
    lines = [line.split("] ", 1)[1] for line in out.getvalue().splitlines()]
    assert lines == [
        f"ingest {collection}: 0/3 documents | document_sensor -> raw_documents: parsing",
        f"ingest {collection}: 0/3 documents | document_chunks: chunking",
        f"ingest {collection}: 0/3 chunks | chunk_embeddings: embedding",
        f"ingest {collection}: 3/3 chunks | rag_index: writing the index",
    ]

    observations = [
        e.event_specific_data.asset_observation  # type: ignore[union-attr]
        for e in run.all_events
        if e.event_type_value == "ASSET_OBSERVATION"
    ]
    assert [o.asset_key for o in observations] == [dg.AssetKey("chunk_embeddings")]
    meta = observations[0].metadata
    assert meta["embedded"].value == meta["to_embed"].value == 3 and meta["percent"].value == 100.0
    assert f"embedded 3/3 chunk texts of {collection!r}" in logs


def test_progress_on_a_terminal_draws_a_bar() -> None:
    """The rich path (a bar with done/total, not one line per change) when the stream is a terminal."""
    out = io.StringIO()
    with LiveProgress("workflow w", "tasks", stream=out, tty=True) as bar:
        bar.update(1, 3, "running: a")
        bar.update(3, 3, "succeeded")
    drawn = out.getvalue()
    assert "3/3" in drawn and "succeeded" in drawn and "running: a" not in drawn and " | " not in drawn


def test_ingest_wait_prints_plain_progress_lines(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    pg_url: str,
    kafka_bootstrap: str,
    object_store_dir: Path,
    rag_resources: dict[str, Any],
) -> None:
    """The CLI end to end (session S3, Postgres, Tansu); a thread plays the daemon's part."""
    monkeypatch.setenv("AGENTFLOW_POSTGRES_URL", pg_url)
    monkeypatch.setenv("AGENTFLOW_KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("AGENTFLOW_DATA_DIR", str(object_store_dir.parent))
    monkeypatch.delenv("AGENTFLOW_OPENSEARCH_URL", raising=False)
    get_settings.cache_clear()
    collection = f"prog_{uuid.uuid4().hex[:6]}"
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(3):
        (folder / f"doc{i}.txt").write_text(f"Document {i}: " + " ".join(uuid.uuid4().hex for _ in range(20)))
    # The CLI uploads to S3: the stand-in daemon reads the same store.
    resources = {**rag_resources, "object_store": build_resources(get_settings())["object_store"]}
    try:
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions(COLLECTIONS, [collection])

            def daemon() -> None:
                time.sleep(2.5)  # after the CLI's first look
                dg.materialize(rag_assets, partition_key=collection, resources=resources, instance=instance)

            worker = threading.Thread(target=daemon)
            worker.start()
            out = CliRunner().invoke(
                main, ["ingest", str(folder), "-c", collection, "--wait", "--timeout", "120"]
            )
            worker.join(120)
    finally:
        get_settings.cache_clear()
    assert out.exit_code == 0, out.output
    lines = [line.split("] ", 1)[1] for line in out.stderr.splitlines() if line.startswith("[")]
    assert lines[0] == f"ingest {collection}: 0/3 documents | document_sensor -> raw_documents: parsing"
    assert len(lines) == len(set(lines)) and "\x1b[" not in out.stderr
    assert f"index of {collection!r} includes 3 change(s)" in out.stdout
