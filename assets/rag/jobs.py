"""The RAG job (all four assets and their checks for one collection) and its nightly re-check."""

import dagster as dg

from assets.rag.assets import TAG_TRIGGER
from assets.rag.partitions import COLLECTIONS, collections_partitions

rag_index_job = dg.define_asset_job(
    "rag_index_job",
    selection=dg.AssetSelection.groups("rag"),
    partitions_def=collections_partitions,
    # One process per run: the embedding model is loaded once, not once per step subprocess.
    executor_def=dg.in_process_executor,
    description="Bring one collection's index up to date (incremental) and run its checks.",
)


@dg.schedule(cron_schedule="0 3 * * *", job=rag_index_job, execution_timezone="UTC")
def rag_nightly_schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
    """Every collection, every night: catches changes whose event was lost and re-runs the checks."""
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    return [
        dg.RunRequest(
            run_key=f"rag-nightly-{day}-{collection}",
            partition_key=collection,
            tags={TAG_TRIGGER: "nightly"},
        )
        for collection in context.instance.get_dynamic_partitions(COLLECTIONS)
    ]
