"""A separate run-worker process: executes one workflow job in-process, as a Dagster run worker would."""

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
    """argv: pg_url redis_url object_dir request_json traceparent."""
    pg_url, redis_url, object_dir, request_json, traceparent = sys.argv[1:6]
    req = WorkflowRequest.model_validate_json(request_json)
    spec = load_specs()[req.workflow]
    resources = {
        "postgres": PostgresResource(url=pg_url),
        "redis": RedisResource(url=redis_url),
        "object_store": ObjectStoreResource(local_dir=object_dir),
        "llm": LLMResource(),
    }
    # The trace context arrives as a string, exactly as the run tag / run config carries it.
    run_config = request_run_config(req, spec.version, traceparent=traceparent or None)
    result = build_workflow_job(spec).execute_in_process(run_config=run_config, resources=resources)
    print(json.dumps({"success": result.success, "run_id": result.run_id}))


if __name__ == "__main__":
    main()
