"""LLM endpoint faults through a compiled workflow job: bounded retries, the fallback path, costs recorded.

tests/llm/test_openai_compat.py proves the provider's retry arithmetic per fault and tests/ops proves the
fallback on 5xx; here every fault kind goes through the whole job, with wall-clock and request bounds.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from agentflow_dagster.db import make_engine
from agentflow_dagster.events import WorkflowRequest
from agentflow_dagster.llm.openai_compat import BackoffPolicy, OpenAICompatProvider
from agentflow_dagster.llm.types import ChatRequest, LLMExhaustedError
from agentflow_dagster.workflows.loader import load_spec_file, load_specs
from ops.compiler import build_workflow_jobs, request_run_config
from resources.llm import LLMResource
from resources.object_store import ObjectStoreResource
from resources.postgres import PostgresResource
from resources.redis import RedisResource
from tests.support import llm_server as script
from tests.support.llm_server import LLMTestServer

pytestmark = pytest.mark.slow
REASONING, FAST = "gpt-4o", "gpt-4o-mini"  # priced models: a recorded cost is visible
HTTP_ATTEMPTS, OP_ATTEMPTS = 3, 2  # the resource below, and summarize's max_retries=1
DOCUMENT = "Kafka carries events. Dagster runs the workflow. Postgres keeps the history."


@pytest.fixture(scope="module")
def job_and_spec(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """summarize_with_fallback under another name, with near-zero op retry delays."""
    raw = yaml.safe_load(Path(load_specs()["summarize_with_fallback"].source_file).read_text())
    raw["name"] = "chaos_summarize"
    for task in raw["tasks"]:
        task["retry"]["delay_s"] = 0.01
    path = tmp_path_factory.mktemp("specs") / "chaos_summarize.yaml"
    path.write_text(yaml.safe_dump(raw))
    spec = load_spec_file(path)
    return build_workflow_jobs([spec])[0], spec


@pytest.fixture
def server() -> Iterator[LLMTestServer]:
    with LLMTestServer() as srv:
        yield srv


@pytest.fixture
def engine(pg_url: str) -> Iterator[sa.Engine]:
    eng = make_engine(pg_url)
    yield eng
    eng.dispose()


def run_job(job_and_spec: tuple[Any, Any], resources: dict[str, Any]) -> tuple[Any, str]:
    job, spec = job_and_spec
    req = WorkflowRequest(
        event_id=f"llm-{uuid.uuid4().hex[:12]}", workflow=spec.name, inputs={"document": DOCUMENT}
    )
    config = request_run_config(req, spec.version, traceparent="00-" + "ab" * 16 + "-" + "cd" * 8 + "-01")
    return job.execute_in_process(run_config=config, resources=resources, raise_on_error=False), req.plan_id


FAULTS = {
    "429_storm_retry_after": script.rate_limited(1),
    "5xx": script.server_error(503),
    "timeout": script.slow(5.0),
    "truncated_json": script.truncated(),
    "invalid_json": script.invalid_json(),
    "slow_stream": script.trickle(30.0),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_on_the_primary_model_runs_the_fallback_within_bounds(
    fault: str,
    job_and_spec: tuple[Any, Any],
    server: LLMTestServer,
    engine: sa.Engine,
    pg_url: str,
    redis_url: str,
    object_store_dir: Path,
) -> None:
    """The reasoning model always fails this way: bounded attempts, fallback answers, every call recorded."""
    server.rule(lambda body: body["model"] == REASONING, FAULTS[fault])
    llm = LLMResource(
        base_url=server.base_url, api_key="test-key", timeout_s=1.0, max_attempts=HTTP_ATTEMPTS,
        max_total_wait_s=5.0, backoff_base_s=0.05, backoff_max_s=0.2,
        models={"default": FAST, "fast": FAST, "reasoning": REASONING},
    )  # fmt: skip
    resources = {
        "postgres": PostgresResource(url=pg_url),
        "redis": RedisResource(url=redis_url),
        "object_store": ObjectStoreResource(local_dir=str(object_store_dir)),
        "llm": llm,
    }
    started = time.monotonic()
    result, plan_id = run_job(job_and_spec, resources)
    elapsed = time.monotonic() - started
    assert result.success
    summarize = result.output_for_node("summarize")
    assert summarize["fallback_used"] and summarize["agent"] == "brief_summarizer"
    primary = server.count(lambda b: b["model"] == REASONING)
    print(f"\n{fault}: {primary} primary and {server.count() - primary} fallback requests, {elapsed:.1f}s")
    assert primary == OP_ATTEMPTS * HTTP_ATTEMPTS  # the provider's attempts times the op's, no more
    # 1 s per attempt timeout, <= 5 s of waits per call, 2 op attempts: well under a minute.
    assert elapsed < 45, f"{fault}: {elapsed:.1f}s"
    with engine.connect() as conn:
        calls = conn.execute(
            sa.text("SELECT model, error IS NULL AS ok, cost_usd FROM llm_calls WHERE plan_id = :p"),
            {"p": plan_id},
        ).all()
    assert len(calls) == server.count()  # every attempt, failed ones too, has its record
    assert sum(1 for c in calls if c.model.startswith(REASONING) and not c.ok) == primary
    paid = [c for c in calls if c.ok]
    assert paid and all(float(c.cost_usd) > 0 for c in paid), calls
    if fault == "429_storm_retry_after":
        assert elapsed >= OP_ATTEMPTS * (HTTP_ATTEMPTS - 1) * 1.0  # every Retry-After: 1 was honoured


def test_a_trickling_body_is_cut_at_the_attempt_timeout(server: LLMTestServer) -> None:
    """A body that sends a byte at a time never trips a per-read timeout; the attempt must still end."""
    server.script(script.trickle(30.0))
    provider = OpenAICompatProvider(
        server.base_url, "k", timeout_s=1.0, policy=BackoffPolicy(max_attempts=2, base_delay_s=0.01)
    )
    request = ChatRequest([{"role": "user", "content": "hi"}], "m", None, "Answer")
    started = time.monotonic()
    result = provider.chat(request)
    assert result.attempts == 2 and time.monotonic() - started < 5
    with pytest.raises(LLMExhaustedError):
        server.rule(lambda body: True, script.trickle(30.0))
        provider.chat(request)
