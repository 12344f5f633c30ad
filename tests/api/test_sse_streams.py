"""Event streams are async: 200 open streams hold no threads, submits still answer, disconnects are seen."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from agentflow_dagster.settings import Settings
from tests.api.conftest import Keys
from tests.support.api_server import api_env, running_api

pytestmark = pytest.mark.timeout(600)
STREAMS = 200  # the blocking generator stalled every endpoint at about 40 (the thread pool's size)
BODY = {"workflow": "support_triage", "inputs": {"message": "my invoice was charged twice"}}


def _open_streams(base: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "agentflow_api_open_streams":
                return s.value
    raise AssertionError("agentflow_api_open_streams is missing from /metrics")


def test_200_open_streams_do_not_stall_submits(
    api_settings: Settings, keys: Keys, engine: sa.Engine, tmp_path: Path
) -> None:
    tenant = f"sse_{uuid.uuid4().hex[:6]}"
    plan = f"plan-{uuid.uuid4().hex[:20]}"
    with engine.begin() as conn:  # a running workflow whose streams stay open
        conn.execute(
            sa.text(
                "INSERT INTO workflow_runs (plan_id, event_id, workflow, version, tenant, status, "
                "submitted_at, started_at) VALUES (:p, :p, 'support_triage', '1.0.0', :t, 'running', "
                "now(), now())"
            ),
            {"p": plan, "t": tenant},
        )
    headers = keys(tenant)
    env = api_env(
        api_settings,
        AGENTFLOW_API_SSE_POLL_S="5",  # 200 streams poll Postgres 40 times a second
        AGENTFLOW_API_REQUESTS_PER_MINUTE="100000",
    )

    async def scenario(base: str) -> tuple[list[int], int]:
        opened: list[int] = []
        stop = asyncio.Event()
        limits = httpx.Limits(max_connections=STREAMS + 20, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:

            async def hold() -> None:
                async with client.stream("GET", f"/v1/workflows/{plan}/events", headers=headers) as r:
                    assert r.status_code == 200
                    async for line in r.aiter_lines():
                        if line == "event: status":
                            opened.append(1)
                            await stop.wait()
                            return  # closes the connection: the server must notice

            holders = [asyncio.create_task(hold()) for _ in range(STREAMS)]
            deadline = time.monotonic() + 240  # generous: the machine may be busy
            while len(opened) < STREAMS and time.monotonic() < deadline:
                assert not any(t.done() and t.exception() for t in holders)
                await asyncio.sleep(0.2)
            assert len(opened) == STREAMS, f"only {len(opened)} of {STREAMS} streams got their first event"
            open_now = int(await asyncio.to_thread(_open_streams, base))
            statuses = []
            for _ in range(5):  # each must answer while the 200 streams stay open (timeout 60 s)
                r = await client.post("/v1/workflows", json=BODY, headers=headers)
                statuses.append(r.status_code)
            stop.set()
            await asyncio.gather(*holders)
        return statuses, open_now

    with running_api(env, tmp_path / "api.log", "--no-migrate", "--no-tracing") as base:
        statuses, open_now = asyncio.run(scenario(base))
        assert statuses == [202] * 5
        assert open_now == STREAMS
        # Closed by the clients: every stream's generator was cancelled (bounded wait).
        deadline = time.monotonic() + 30
        while _open_streams(base) != 0:
            assert time.monotonic() < deadline, f"{_open_streams(base)} streams still open after disconnect"
            time.sleep(0.5)
