"""Benchmark code location: the shipped one plus the bench-only 3-task spec, compiled the same way.

BENCH_EXECUTOR (auto | in_process | multiprocess) and BENCH_SENSOR_INTERVAL override the spec's
executor and the request sensor's interval, so one lever can be measured at a time.
"""

import os
from pathlib import Path

import dagster as dg

from agentflow_dagster.resources_env import build_resources
from agentflow_dagster.settings import get_settings
from agentflow_dagster.workflows.loader import load_specs
from assets.rag import COLLECTIONS, rag_assets, rag_checks, rag_index_job, rag_nightly_schedule
from ops.compiler import build_workflow_jobs
from sensors.documents import make_document_sensor
from sensors.run_status import make_run_status_sensors
from sensors.workflow_requests import make_workflow_request_sensor

specs = {**load_specs(), **load_specs(Path(__file__).parent / "specs")}
if executor := os.environ.get("BENCH_EXECUTOR"):
    specs = {name: spec.model_copy(update={"executor": executor}) for name, spec in specs.items()}
workflow_jobs = build_workflow_jobs(specs.values(), retriever_keys=("embeddings", "vector_store"))
interval = int(os.environ.get("BENCH_SENSOR_INTERVAL") or 2)  # 2: the sensor's own default

defs = dg.Definitions(
    assets=rag_assets,
    asset_checks=rag_checks,
    jobs=[rag_index_job, *workflow_jobs],
    schedules=[rag_nightly_schedule],
    sensors=[
        make_document_sensor(rag_index_job, COLLECTIONS),
        make_workflow_request_sensor(workflow_jobs, specs, minimum_interval_seconds=interval),
        *make_run_status_sensors(workflow_jobs, specs),
    ],
    resources=build_resources(get_settings()),
)
