"""The RAG fixtures (embedding model loaded once per session), shared with tests/rag."""

from tests.rag.conftest import embeddings

__all__ = ["embeddings"]
