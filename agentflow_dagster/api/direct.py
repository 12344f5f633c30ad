"""The direct launch path: a workflow request becomes a Dagster run through the webserver's GraphQL API."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx
import redis as redis_lib
from dagster_graphql import DagsterGraphQLClient

from agentflow_dagster import names
from agentflow_dagster.api.context import Unavailable
from agentflow_dagster.events import WorkflowRequest
from agentflow_dagster.workflows.spec import WorkflowSpec
from sensors.workflow_requests import (
    TAG_PRIORITY,
    TAG_TRACEPARENT,
    TAG_VERSION,
    max_runtime_tags,
    trace_id_from,
)

_RUNS_BY_TAG = """
query RunsByEvent($tags: [ExecutionTag!]) {
  runsOrError(filter: {tags: $tags}, limit: 5) {
    __typename
    ... on Runs { results { runId status } }
    ... on PythonError { message }
  }
}
"""


class DirectLaunchError(Unavailable):
    """The webserver refused or could not be reached; the message says which and why."""


def run_tags(
    req: WorkflowRequest, version: str, traceparent: str, spec: WorkflowSpec | None = None
) -> dict[str, str]:
    """The same tags the request sensor puts on a run, so both paths look alike downstream."""
    return {
        names.TAG_PLAN_ID: req.plan_id,
        names.TAG_EVENT_ID: req.event_id,
        names.TAG_WORKFLOW: req.workflow,
        names.TAG_TENANT: req.tenant,
        names.TAG_TRACE_ID: trace_id_from(traceparent) or "",
        TAG_TRACEPARENT: traceparent,
        TAG_VERSION: version,
        TAG_PRIORITY: str(req.priority),
        **max_runtime_tags(spec),
    }


class DirectLauncher:
    """At most one run per event_id: a Redis lock serialises launchers, a tag query finds earlier runs."""

    def __init__(
        self,
        url: str,
        *,
        location: str = "agentflow",
        repository: str = "__repository__",
        redis: redis_lib.Redis | None = None,
        timeout_s: float = 30.0,
        specs: Mapping[str, WorkflowSpec] | None = None,
    ) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        self.url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self.location = location
        self.repository = repository
        self.redis = redis
        self.timeout_s = timeout_s
        # The callers' loaded specs (API context, CLI): each run's max runtime comes from its spec.
        self._specs = dict(specs or {})
        self.client = DagsterGraphQLClient(
            parts.hostname or "127.0.0.1",
            port_number=parts.port,
            use_https=parts.scheme == "https",
            timeout=int(timeout_s),
            path_prefix=parts.path.rstrip("/"),
        )

    def spec_for(self, workflow: str, version: str) -> WorkflowSpec | None:
        """The spec a run of `workflow` at `version` executes, for its max runtime (None: not known here)."""
        spec = self._specs.get(workflow)
        return spec if spec is not None and spec.version == version else None

    def find_run(self, event_id: str) -> str | None:
        """The run already launched for this event, if any."""
        try:
            resp = httpx.post(
                f"{self.url}/graphql",
                json={
                    "query": _RUNS_BY_TAG,
                    "variables": {"tags": [{"key": names.TAG_EVENT_ID, "value": event_id}]},
                },
                timeout=self.timeout_s,
            )
            resp.raise_for_status()
            data: dict[str, Any] = resp.json()["data"]["runsOrError"]
        except (httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
            raise DirectLaunchError(f"Dagster GraphQL at {self.url} could not list runs: {exc}") from exc
        if data.get("__typename") != "Runs":
            raise DirectLaunchError(f"Dagster GraphQL at {self.url}: {data.get('message', data)}")
        results = data["results"]
        return str(results[0]["runId"]) if results else None

    def launch(self, req: WorkflowRequest, version: str, traceparent: str) -> tuple[str, bool]:
        """(run_id, launched_now): an event that already has a run gets that run back."""
        from ops.compiler import request_run_config

        lock = (
            self.redis.lock(f"agentflow:direct:{req.event_id}", timeout=self.timeout_s * 2)
            if self.redis
            else None
        )
        if lock is not None and not lock.acquire(blocking=True, blocking_timeout=self.timeout_s):
            raise DirectLaunchError(f"another launcher holds event {req.event_id}; retry")
        try:
            existing = self.find_run(req.event_id)
            if existing is not None:
                return existing, False
            try:
                run_id = self.client.submit_job_execution(
                    req.workflow,
                    repository_location_name=self.location,
                    repository_name=self.repository,
                    run_config=request_run_config(req, version, traceparent=traceparent),
                    tags=run_tags(req, version, traceparent, self.spec_for(req.workflow, version)),
                )
            except (
                Exception
            ) as exc:  # DagsterGraphQLClientError or transport errors: both mean "not launched"
                raise DirectLaunchError(
                    f"Dagster GraphQL at {self.url} did not launch {req.workflow}: {exc}"
                ) from exc
            return run_id, True
        finally:
            # A lock that expired first cannot be released; the tag query still guards against a second run.
            if lock is not None:
                with contextlib.suppress(redis_lib.exceptions.LockError):
                    lock.release()
