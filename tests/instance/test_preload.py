"""The forkserver preload: what every run worker inherits, and what it must not."""

from __future__ import annotations

import subprocess
import sys


def test_preload_brings_the_embedding_client_but_never_torch() -> None:
    # torch's thread pool does not survive fork: a forked worker's first encode can hang
    # (bench/retrieval_bench.py measures it); the model lives in the embedding service instead.
    code = (
        "import sys, agentflow_dagster.instance.preload as p; "
        "print(p.preload(), 'agentflow_dagster.rag.embed_service' in sys.modules, "
        "'torch' in sys.modules, 'sentence_transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "[] True False False", out.stdout + out.stderr[-2000:]
