"""The code location: assembles jobs, assets, sensors, schedules and resources."""

import dagster as dg

from agentflow_dagster.resources_env import build_resources
from agentflow_dagster.settings import get_settings

defs = dg.Definitions(
    resources=build_resources(get_settings()),
)
