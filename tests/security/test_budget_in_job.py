"""The per-workflow token cap stops a compiled job: the workflow fails, named, after the calls that fit."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from agentflow_dagster.settings import get_settings
from agentflow_dagster.workflows.loader import load_specs
from ops.compiler import build_workflow_job
from tests.ops.conftest import Resources, execute, new_request, rows, server_llm
from tests.support.llm_server import LLMTestServer


def test_cap_fails_the_workflow_without_fallback(
    monkeypatch: pytest.MonkeyPatch,
    workflow_resources: Resources,
    llm_server: LLMTestServer,
    engine: sa.Engine,
) -> None:
    monkeypatch.setenv("AGENTFLOW_MAX_TOKENS_PER_WORKFLOW", "1400")
    get_settings.cache_clear()
    spec = load_specs()["summarize_with_fallback"]
    job = build_workflow_job(spec)
    req = new_request(spec, {"document": "Kafka keeps ordered logs per partition."})
    result = execute(job, spec, req, workflow_resources(server_llm(llm_server)))
    get_settings.cache_clear()
    assert not result.success
    # summarize fit (~220 prompt + 1,024 max_tokens <= 1,400) and spent 120; the reviewer's worst case
    # did not, and no fallback ran (it could not fit either).
    assert llm_server.count() == 1
    (wf,) = rows(engine, "SELECT status, error FROM workflow_runs WHERE plan_id = :p", p=req.plan_id)
    assert wf.status == "failed" and "workflow token budget exceeded" in wf.error, wf.error
