"""`agentflow api` for real: uvicorn on a free port, then stopped by pid; its output never holds a key."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from agentflow_dagster.settings import Settings
from agentflow_dagster.stack.services import free_port
from tests.api.conftest import Keys


def test_agentflow_api_serves_and_never_prints_keys(
    api_settings: Settings, keys: Keys, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "AGENTFLOW_POSTGRES_URL": api_settings.postgres_url or "",
        "AGENTFLOW_REDIS_URL": api_settings.redis_url or "",
        "AGENTFLOW_KAFKA_BOOTSTRAP_SERVERS": api_settings.kafka_bootstrap_servers or "",
        "AGENTFLOW_DATA_DIR": str(api_settings.data_dir),
        "AGENTFLOW_API_PRELOAD_RETRIEVER": "false",
    }
    log = tmp_path / "api.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agentflow_dagster", "api", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=out,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        assert httpx.get(f"{base}/readyz", timeout=30).status_code == 200
        assert "/v1/workflows" in httpx.get(f"{base}/openapi.json", timeout=5).json()["paths"]
        headers = keys("acme")
        body = {"workflow": "support_triage", "inputs": {"message": "hello"}}
        assert httpx.post(f"{base}/v1/workflows", json=body, headers=headers, timeout=30).status_code == 202
        assert (
            httpx.get(
                f"{base}/v1/workflows/plan-00000000000000000000",
                headers={"Authorization": headers["Authorization"][:-2]},
                timeout=5,
            ).status_code
            == 401
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    text = log.read_text()
    assert "POST /v1/workflows" in text  # the access log is on...
    assert headers["Authorization"].removeprefix("Bearer ")[:-2] not in text  # ...and holds no key
