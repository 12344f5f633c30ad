"""Fixtures shared with tests/ops (workflow resources, the LLM test server), tests/rag (embeddings) and
tests/observability (spans in memory)."""

from tests.observability.conftest import spans
from tests.ops.conftest import engine, llm_server, workflow_resources
from tests.rag.conftest import embeddings, rag_resources

__all__ = ["embeddings", "engine", "llm_server", "rag_resources", "spans", "workflow_resources"]
