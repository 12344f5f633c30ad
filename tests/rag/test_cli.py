"""`agentflow ingest` and `agentflow search` against the session servers."""

from __future__ import annotations

import json
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
from agentflow_dagster.events import DocumentEvent
from agentflow_dagster.settings import get_settings
from assets.rag import COLLECTIONS, rag_assets
from resources.kafka import KafkaResource
from tests.rag.corpus import corpus
from tests.sensors.conftest import end_cursor, read_all


@pytest.fixture()
def env(monkeypatch: pytest.MonkeyPatch, pg_url: str, kafka_bootstrap: str, object_store_dir: Path) -> Any:
    monkeypatch.setenv("AGENTFLOW_POSTGRES_URL", pg_url)
    monkeypatch.setenv("AGENTFLOW_KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("AGENTFLOW_DATA_DIR", str(object_store_dir.parent))
    monkeypatch.delenv("AGENTFLOW_OPENSEARCH_URL", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_ingest_emits_events_then_waits_for_the_index_and_search_finds_it(
    env: Any, tmp_path: Path, kafka_bootstrap: str, rag_resources: dict[str, Any]
) -> None:
    kafka = KafkaResource(bootstrap_servers=kafka_bootstrap)
    collection = f"cli_{uuid.uuid4().hex[:6]}"
    for name, data in corpus().items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "skip.bin").write_bytes(b"\x00")
    cursor = end_cursor(kafka, names.TOPIC_DOCUMENTS)

    out = CliRunner().invoke(main, ["ingest", str(tmp_path), "--collection", collection])
    assert out.exit_code == 0, out.output
    assert out.output.count("add    agentflow-documents/") == 4 and "skip.bin" not in out.output
    events = [
        DocumentEvent.model_validate_json(r.value) for r in read_all(kafka, names.TOPIC_DOCUMENTS, cursor)
    ]
    assert sorted(e.key for e in events) == sorted(f"{collection}/{n}" for n in corpus())
    assert {e.action for e in events} == {"add"} and {e.collection for e in events} == {collection}

    # --wait returns once the index holds the uploaded versions; here a thread plays the daemon's part.
    (tmp_path / "volcano.txt").write_text("Lahars are mudflows of volcanic debris and water.")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(COLLECTIONS, [collection])

        def daemon() -> None:
            time.sleep(2)
            dg.materialize(rag_assets, partition_key=collection, resources=rag_resources, instance=instance)

        worker = threading.Thread(target=daemon)
        worker.start()
        waited = CliRunner().invoke(
            main, ["ingest", str(tmp_path / "volcano.txt"), "-c", collection, "--wait", "--timeout", "120"]
        )
        worker.join(120)
    assert waited.exit_code == 0, waited.output
    assert f"update agentflow-documents/{collection}/volcano.txt" in waited.output
    assert f"index of {collection!r} includes 1 change(s)" in waited.output

    found = CliRunner().invoke(
        main, ["search", "mudflows of volcanic debris", "-c", collection, "-k", "2", "--json"]
    )
    assert found.exit_code == 0, found.output
    hits = json.loads(found.output)
    assert len(hits) == 2 and hits[0]["document"] == f"{collection}/volcano.txt"
    assert {"chunk_id", "text", "score", "document", "version", "start", "end"} <= set(hits[0])
    text = CliRunner().invoke(main, ["search", "sourdough", "-c", collection, "-k", "1"])
    assert text.exit_code == 0 and f"{collection}/baking.html [" in text.output


def test_ingest_rejects_bad_collection_names(env: Any, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    out = CliRunner().invoke(main, ["ingest", str(tmp_path), "--collection", "Bad-Name"])
    assert out.exit_code != 0 and "must match" in out.output
