"""The direct launch path against a real dagster-webserver: exactly one run per event_id."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from agentflow_dagster.api import create_app
from agentflow_dagster.api.config import ApiConfig
from agentflow_dagster.api.direct import DirectLauncher
from agentflow_dagster.events import WorkflowRequest
from agentflow_dagster.settings import Settings
from agentflow_dagster.stack.services import free_port
from agentflow_dagster.workflows.spec import WorkflowSpec
from tests.api.conftest import Keys
from tests.support.dagster_webserver import dagster_webserver, runs_for_event


@pytest.fixture(scope="module")
def webserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with dagster_webserver(tmp_path_factory.mktemp("dagster_direct"), "direct_test") as url:
        yield url


def _runs_for(launcher: DirectLauncher, event_id: str) -> int:
    return len(runs_for_event(launcher.url, event_id))


def test_concurrent_launches_of_one_event_make_one_run(webserver: str, redis_url: str) -> None:
    launcher = DirectLauncher(webserver, location="direct_test", redis=redis.Redis.from_url(redis_url))
    req = WorkflowRequest(
        event_id=f"direct-{uuid.uuid4().hex}", workflow="support_triage", inputs={"message": "hi"}
    )
    results: list[tuple[str, bool]] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(launcher.launch(req, "1.0.0", f"00-{'a' * 32}-{'b' * 16}-01"))
        )
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 4 and len({run_id for run_id, _ in results}) == 1
    assert sum(launched for _, launched in results) == 1
    assert _runs_for(launcher, req.event_id) == 1


def test_gateway_direct_mode_launches_once_per_idempotency_key(
    webserver: str, api_settings: Settings, specs: dict[str, WorkflowSpec], keys: Keys
) -> None:
    config = ApiConfig(
        launch="direct",
        dagster_graphql_url=webserver,
        dagster_location="direct_test",
        preload_retriever=False,
    )
    headers = {**keys("acme"), "Idempotency-Key": f"direct-{uuid.uuid4().hex}"}
    body = {"workflow": "support_triage", "inputs": {"message": "refund please"}}
    with TestClient(create_app(api_settings, config, specs=specs)) as client:
        first = client.post("/v1/workflows", json=body, headers=headers)
        second = client.post("/v1/workflows", json=body, headers=headers)
    assert first.status_code == second.status_code == 202, first.text
    assert first.json()["run_id"] and first.json()["plan_id"] == second.json()["plan_id"]
    launcher = DirectLauncher(webserver, location="direct_test")
    assert _runs_for(launcher, first.json()["event_id"]) == 1


def test_unreachable_webserver_is_503(
    api_settings: Settings, specs: dict[str, WorkflowSpec], keys: Keys
) -> None:
    config = ApiConfig(
        launch="direct",
        dagster_graphql_url=f"http://127.0.0.1:{free_port()}",
        kafka_timeout_s=1,
        preload_retriever=False,
    )
    with TestClient(create_app(api_settings, config, specs=specs)) as client:
        r = client.post(
            "/v1/workflows",
            json={"workflow": "support_triage", "inputs": {"message": "x"}},
            headers=keys("acme"),
        )
    assert r.status_code == 503
