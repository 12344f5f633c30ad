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


def test_preload_brings_the_s3_compute_log_manager_with_a_warm_boto3_session() -> None:
    # Built in every worker, the S3 compute log manager's imports and client were the largest share of
    # the run workers' CPU (docs/performance.md): the forkserver imports them and warms boto3's default
    # session, which forked workers inherit.
    code = (
        "import sys, agentflow_dagster.instance.preload as p, boto3; "
        "session = boto3.DEFAULT_SESSION; "
        "loader = session._session.get_component('data_loader') if session else None; "
        "cached = [k for k in (loader._cache if loader else {}) if 's3' in str(k)]; "
        "print('agentflow_dagster.instance.compute_logs_s3' in sys.modules, 'minio' in sys.modules, "
        "session is not None, bool(cached)); "
        "from genai_prices import data_snapshot; "
        "print(data_snapshot._bundled_snapshot.cache_info().currsize == 1)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["True"] * 5, out.stdout + out.stderr[-2000:]
