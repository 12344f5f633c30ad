"""RAG building blocks: parsers, chunking, vector stores and the retriever."""
