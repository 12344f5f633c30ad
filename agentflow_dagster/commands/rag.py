"""`agentflow ingest`: upload documents, emit events, wait for the index (search: commands/search.py)."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Literal

import click
import sqlalchemy as sa

from agentflow_dagster import names
from agentflow_dagster.commands.progress import LiveProgress
from agentflow_dagster.events import NAME_PATTERN, DocumentEvent
from agentflow_dagster.rag.parsers import PARSERS
from agentflow_dagster.rag.store import VectorStore
from agentflow_dagster.resources_env import build_resources
from agentflow_dagster.settings import get_settings
from resources.object_store import ObjectNotFound, validate_key

_UNSAFE = re.compile(r"[^A-Za-z0-9._\-/]+")


@contextmanager
def _resources(*names_: str) -> Iterator[dict[str, Any]]:
    """Initialized resources (EnvVar secrets resolved) from this environment's AGENTFLOW_* settings."""
    all_resources = build_resources(get_settings())
    with ExitStack() as stack:
        yield {n: stack.enter_context(all_resources[n].process_config_and_initialize_cm()) for n in names_}


def _check_collection(collection: str) -> None:
    if not re.match(NAME_PATTERN, collection):
        raise click.BadParameter(f"{collection!r} must match {NAME_PATTERN}", param_hint="--collection")


def document_files(path: Path) -> list[tuple[Path, str]]:
    """(file, key relative to the collection) for every parseable file under `path`."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    base = path.parent if path.is_file() else path
    out = []
    for f in files:
        if f.suffix.lower() not in PARSERS or any(part.startswith(".") for part in f.relative_to(base).parts):
            continue
        out.append((f, _UNSAFE.sub("-", f.relative_to(base).as_posix())))
    return out


def index_holds(
    store: VectorStore, engine: sa.Engine, collection: str, expected: dict[str, str | None]
) -> bool:
    """True when the live index reflects `expected` (key -> version, None for deleted)."""
    in_index = store.document_versions(collection)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT d.key, d.version, d.chunked_version, count(c.chunk_id) AS chunks FROM rag_documents d"
                " LEFT JOIN rag_chunks c ON c.collection = d.collection AND c.document = d.key"
                " WHERE d.collection = :c AND d.key = ANY(:keys) GROUP BY d.key, d.version, d.chunked_version"
            ),
            {"c": collection, "keys": list(expected)},
        ).all()
    docs = {r.key: r for r in rows}
    for key, version in expected.items():
        if version is None:
            if key in in_index or key in docs:
                return False
            continue
        row = docs.get(key)
        if row is None or row.version != version or row.chunked_version != version:
            return False
        # A document without text (empty, or unparseable) has no chunks and never shows up in the index.
        if row.chunks and in_index.get(key) != {version}:
            return False
    return True


@click.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--collection", "-c", required=True, help="Collection (dynamic partition) to add the files to.")
@click.option("--delete", is_flag=True, help="Remove these files from the collection instead of adding them.")
@click.option("--wait", is_flag=True, help="Return only when the collection's index includes the change.")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds --wait waits.")
def ingest(path: Path, collection: str, delete: bool, wait: bool, timeout: float) -> None:
    """Upload PATH (a txt/md/html/pdf file or folder) to agentflow-documents/<collection>/, emit events."""
    _check_collection(collection)
    files = document_files(path)
    if not files:
        raise click.ClickException(f"no {'/'.join(sorted(PARSERS))} files under {path}")
    with _resources("object_store", "kafka") as res:
        expected = _upload(res["object_store"].store, res["kafka"], files, collection, delete)
    if not wait:
        return
    model_id = build_resources(get_settings())["embeddings"].model_id
    with _resources("vector_store", "postgres") as idx, LiveProgress(f"ingest {collection}", "") as bar:
        engine = idx["postgres"].engine
        deadline = time.monotonic() + timeout
        while not index_holds(idx["vector_store"].store, engine, collection, expected):
            if time.monotonic() > deadline:
                raise click.ClickException(
                    f"the index of {collection!r} did not include the change within {timeout:.0f}s: is the "
                    "dagster-daemon running (`agentflow status`) and document_sensor on?"
                )
            bar.update(*ingest_progress(engine, collection, expected, model_id))
            time.sleep(1.0)
    click.echo(f"index of {collection!r} includes {len(expected)} change(s)")


def ingest_progress(
    engine: sa.Engine, collection: str, expected: dict[str, str | None], model_id: str
) -> tuple[int, int, str, str]:
    """(done, total, step, unit) of the pipeline for `expected`, read from its tables as it commits."""
    added = {k: v for k, v in expected.items() if v is not None}
    if not added:
        return 0, len(expected), "document_sensor -> rag_index: removing from the index", "documents"
    with engine.connect() as conn:
        docs = conn.execute(
            sa.text(
                "SELECT count(*) FILTER (WHERE version = ANY(:versions)) AS parsed,"
                " count(*) FILTER (WHERE chunked_version = version AND version = ANY(:versions)) AS chunked"
                " FROM rag_documents WHERE collection = :c AND key = ANY(:keys)"
            ),
            {"c": collection, "keys": list(added), "versions": list(added.values())},
        ).one()
        chunks = conn.execute(
            sa.text(
                "SELECT count(*) AS total, count(e.content_hash) AS embedded FROM rag_chunks c"
                " LEFT JOIN rag_embedding_cache e ON e.model = :m AND e.content_hash = c.content_hash"
                " WHERE c.collection = :c AND c.document = ANY(:keys) AND c.version = ANY(:versions)"
            ),
            {"c": collection, "m": model_id, "keys": list(added), "versions": list(added.values())},
        ).one()
    n = len(added)
    if docs.parsed < n:
        return docs.parsed, n, "document_sensor -> raw_documents: parsing", "documents"
    if docs.chunked < n:
        return docs.chunked, n, "document_chunks: chunking", "documents"
    if chunks.embedded < chunks.total:
        return chunks.embedded, chunks.total, "chunk_embeddings: embedding", "chunks"
    return chunks.total, chunks.total, "rag_index: writing the index", "chunks"


def _upload(
    objects: Any, kafka: Any, files: list[tuple[Path, str]], collection: str, delete: bool
) -> dict[str, str | None]:
    """Put (or delete) each file and emit its event; returns key -> expected version (None: deleted)."""
    objects.ensure_bucket(names.BUCKET_DOCUMENTS)
    producer = kafka.producer()
    expected: dict[str, str | None] = {}
    try:
        for file, rel in files:
            key = validate_key(f"{collection}/{rel}")
            try:
                objects.stat(names.BUCKET_DOCUMENTS, key)
                existed = True
            except ObjectNotFound:
                existed = False
            action: Literal["add", "update", "delete"] = (
                "delete" if delete else "update" if existed else "add"
            )
            version: str | None = None
            if delete:
                objects.delete(names.BUCKET_DOCUMENTS, key)
            else:
                version = objects.put(names.BUCKET_DOCUMENTS, key, file.read_bytes()).version
            event = DocumentEvent(
                event_id=f"doc-{uuid.uuid4().hex}", collection=collection, key=key, action=action
            )
            # Keyed by collection: one partition per collection keeps its events in order.
            producer.send(
                names.TOPIC_DOCUMENTS, key=collection.encode(), value=event.model_dump_json().encode()
            ).get(timeout=30)
            expected[key] = version
            click.echo(f"{action:6} {names.BUCKET_DOCUMENTS}/{key}  event {event.event_id}")
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=5)
    return expected
