"""The code location: assembles jobs, assets, sensors, schedules and resources."""

import dagster as dg

from agentflow_dagster.agents.roles import FramedPrompt
from agentflow_dagster.project import current_project
from agentflow_dagster.resources_env import build_resources
from agentflow_dagster.settings import get_settings
from agentflow_dagster.workflows.loader import load_specs
from assets.rag import COLLECTIONS, rag_assets, rag_checks, rag_index_job, rag_nightly_schedule
from ops.compiler import build_workflow_jobs
from sensors.documents import make_document_sensor
from sensors.workflow_sensors import workflow_sensors

# Agents retrieve through the RAG retriever built from these two resources.
specs = load_specs()
# Every role's prompt template is built here, once, in the code location (and in the forkserver that
# preloads it): loading a project only checks the templates (agents/roles.py FramedPrompt).
for role in current_project().agents.values():
    if isinstance(role.prompt, FramedPrompt):
        role.prompt.build()
workflow_jobs = build_workflow_jobs(specs.values(), retriever_keys=("embeddings", "vector_store"))

defs = dg.Definitions(
    assets=rag_assets,
    asset_checks=rag_checks,
    jobs=[rag_index_job, *workflow_jobs],
    schedules=[rag_nightly_schedule],
    sensors=[make_document_sensor(rag_index_job, COLLECTIONS), *workflow_sensors(workflow_jobs, specs)],
    resources=build_resources(get_settings()),
)
