"""`agentflow search`: the top chunks of a collection, through the running embedding service.

Kept apart from `ingest` so that it imports neither Dagster nor torch: the query is embedded by the
service `agentflow up` starts (rag/embed_service.py) and searched in pgvector directly; only an
OpenSearch index goes through the Dagster resource.
"""

from __future__ import annotations

import json
import re
from typing import Any

import click

from agentflow_dagster.clients import postgres_url
from agentflow_dagster.events import NAME_PATTERN
from agentflow_dagster.settings import get_settings


def _store() -> Any:
    """The vector store resources_env configures (pgvector without importing Dagster)."""
    s = get_settings()
    if s.opensearch_url:
        from agentflow_dagster.resources_env import build_resources

        return build_resources(s)["vector_store"].build()
    from agentflow_dagster.rag.pgvector_store import PgVectorStore

    return PgVectorStore(postgres_url(s))


@click.command()
@click.argument("query")
@click.option("--collection", "-c", required=True)
@click.option("-k", "k", default=5, show_default=True, type=click.IntRange(1, 100))
@click.option("--mode", type=click.Choice(["hybrid", "vector", "text"]), default="hybrid", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON array of hits (for scripts).")
def search(query: str, collection: str, k: int, mode: str, as_json: bool) -> None:
    """Print the top K chunks of COLLECTION for QUERY with score and source document."""
    from agentflow_dagster.rag.embedders import embedder_from_env
    from agentflow_dagster.rag.retriever import Retriever

    if not re.match(NAME_PATTERN, collection):
        raise click.BadParameter(f"{collection!r} must match {NAME_PATTERN}", param_hint="--collection")
    store = _store()
    try:
        hits = Retriever(embedder_from_env(), store).search(query, collection, k, mode=mode)  # type: ignore[arg-type]
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps([h.model_dump() for h in hits], indent=2))
        return
    if not hits:
        click.echo(f"no hits in {collection!r} (is it indexed? agentflow ingest ... --wait)")
    for i, h in enumerate(hits, start=1):
        snippet = " ".join(h.text.split())[:160]
        click.echo(f"{i:2}. {h.score:.4f}  {h.document} [{h.start}:{h.end}] v{h.version[:12]}\n    {snippet}")
