"""Every sensor of the workflow event path, built from the compiled workflow jobs and their specs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import dagster as dg

from agentflow_dagster.workflows.spec import WorkflowSpec
from sensors.approvals import make_approval_sensor
from sensors.run_status import make_run_status_sensors
from sensors.workflow_requests import make_workflow_request_sensor


def workflow_sensors(
    jobs: Sequence[dg.JobDefinition], specs: Mapping[str, WorkflowSpec]
) -> list[dg.SensorDefinition]:
    """Requests (Kafka -> runs), approvals (decisions, timeouts -> resume runs), run status (-> results)."""
    return [
        make_workflow_request_sensor(jobs, specs),
        make_approval_sensor(jobs, specs),
        *make_run_status_sensors(jobs, specs),
    ]
