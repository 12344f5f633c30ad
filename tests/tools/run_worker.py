"""A run-worker process for the kill test: one workflow run in-process against the given LLM endpoint."""

from __future__ import annotations

import json
import sys

from agentflow_dagster.events import WorkflowRequest
from agentflow_dagster.workflows.loader import load_specs
from ops.compiler import build_workflow_job, request_run_config
from resources.llm import LLMResource
from resources.object_store import ObjectStoreResource
from resources.postgres import PostgresResource
from resources.redis import RedisResource


def main() -> None:
    """argv: pg_url redis_url object_dir llm_base_url request_json (the project: AGENTFLOW_PROJECT_DIR)."""
    pg_url, redis_url, object_dir, base_url, request_json = sys.argv[1:6]
    req = WorkflowRequest.model_validate_json(request_json)
    spec = load_specs()[req.workflow]
    llm = LLMResource(base_url=base_url, api_key="test-key", timeout_s=120, max_attempts=1)
    resources = {
        "postgres": PostgresResource(url=pg_url),
        "redis": RedisResource(url=redis_url),
        "object_store": ObjectStoreResource(local_dir=object_dir),
        "llm": llm,
    }
    job = build_workflow_job(spec)
    result = job.execute_in_process(run_config=request_run_config(req, spec.version), resources=resources)
    print(json.dumps({"success": result.success, "run_id": result.run_id}))


if __name__ == "__main__":
    main()
