"""The code location: assembles jobs, assets, sensors, schedules and resources."""

import dagster as dg

from agentflow_dagster.resources_env import build_resources
from agentflow_dagster.settings import get_settings
from assets.rag import COLLECTIONS, rag_assets, rag_checks, rag_index_job, rag_nightly_schedule
from sensors.documents import make_document_sensor

defs = dg.Definitions(
    assets=rag_assets,
    asset_checks=rag_checks,
    jobs=[rag_index_job],
    schedules=[rag_nightly_schedule],
    sensors=[make_document_sensor(rag_index_job, COLLECTIONS)],
    resources=build_resources(get_settings()),
)
