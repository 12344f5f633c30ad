"""The RAG fixtures, shared with tests/rag."""

from tests.rag.conftest import embeddings, rag_resources

__all__ = ["embeddings", "rag_resources"]
