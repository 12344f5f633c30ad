"""`agentflow api` for real: uvicorn on a free port, then stopped by pid; its output never holds a key."""

from __future__ import annotations

from pathlib import Path

import httpx

from agentflow_dagster.settings import Settings
from tests.api.conftest import Keys
from tests.support.api_server import api_env, running_api


def test_agentflow_api_serves_and_never_prints_keys(
    api_settings: Settings, keys: Keys, tmp_path: Path
) -> None:
    log = tmp_path / "api.log"
    headers = keys("acme")
    with running_api(api_env(api_settings), log) as base:
        assert httpx.get(f"{base}/readyz", timeout=30).status_code == 200
        assert "/v1/workflows" in httpx.get(f"{base}/openapi.json", timeout=5).json()["paths"]
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
    text = log.read_text()
    assert "POST /v1/workflows" in text  # the access log is on...
    assert headers["Authorization"].removeprefix("Bearer ")[:-2] not in text  # ...and holds no key
