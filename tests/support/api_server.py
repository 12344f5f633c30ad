"""`agentflow api` as a real subprocess on a free port, waited for and stopped by pid."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

from agentflow_dagster.settings import Settings
from agentflow_dagster.stack.services import free_port


def api_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment pointing `agentflow api` at the session's servers (no migration, no retriever)."""
    return {
        **os.environ,
        "AGENTFLOW_POSTGRES_URL": settings.postgres_url or "",
        "AGENTFLOW_REDIS_URL": settings.redis_url or "",
        "AGENTFLOW_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers or "",
        "AGENTFLOW_DATA_DIR": str(settings.data_dir),
        "AGENTFLOW_API_PRELOAD_RETRIEVER": "false",
        **extra,
    }


@contextmanager
def running_api(env: Mapping[str, str], log: Path, *args: str, timeout_s: float = 180) -> Iterator[str]:
    """Start `agentflow api --port P *args`, yield its base URL once /healthz answers, stop it by pid."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agentflow_dagster", "api", "--port", str(port), *args],
            env=dict(env),
            stdout=out,
            stderr=out,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        yield base
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 15 s: a server started by a test never outlives it."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
