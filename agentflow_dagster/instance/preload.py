"""Imported once by WarmForkRunLauncher's forkserver: what every run worker would otherwise import.

Profiled with py-spy over a 30-event burst (docs/performance.md): with only `dagster` and the code
location preloaded, ~64 % of the run workers' CPU went to imports done after the fork, mostly
`DagsterInstance.from_ref` pulling in the storage layer (SQLAlchemy table definitions, alembic,
dagster-postgres), `dagster._cli.api`, and client libraries first touched inside a run (kafka,
openai's chat resources, psycopg2, OpenTelemetry instrumentation). Importing them here, before the
fork, leaves only the run's own work in each worker. Nothing here opens a connection or a thread.
"""

from __future__ import annotations

import contextlib
import importlib

MODULES = (
    # Running a run: the execute_run body and the instance's storage layer.
    "dagster._cli.api",
    "dagster._core.instance.ref",
    "dagster._core.storage.base_storage",
    "dagster._core.storage.legacy_storage",
    "dagster._core.storage.runs",
    "dagster._core.storage.event_log",
    "dagster._core.storage.schedules",
    "dagster._core.storage.local_compute_log_manager",
    "dagster._core.execution.api",
    "dagster._core.executor.in_process",
    "dagster_postgres",
    "psycopg2",
    "psycopg2.extras",
    "agentflow_dagster.instance.storage",
    # The S3 compute log manager `agentflow up` configures: dagster_aws (with its components), boto3 and
    # botocore. Imported and its client built in every worker, it was ~40 % of the run workers' busy
    # samples in a py-spy profile of a 30-event burst (docs/performance.md, issue 16).
    "boto3",
    "botocore.client",
    "dagster_aws.s3.compute_log_manager",
    "agentflow_dagster.instance.compute_logs_s3",
    # The object store resource (S3 through the minio client).
    "minio",
    "agentflow_dagster.object_store",
    # Clients a workflow run touches.
    "kafka",
    "redis",
    "resources.redis",
    "httpx",
    "httpx2",
    "httpcore2",
    "openai",
    "openai.resources.chat",
    "openai.resources.chat.chat",
    "openai.resources.chat.completions",
    "upath",
    "upath.core",
    "upath.implementations.local",
    "agentflow_dagster.llm.openai_compat",
    # Retrieval: the embedding service's client (the model itself lives in that service; torch is
    # deliberately not imported here: a worker forked after torch ran its thread pool can hang).
    "http.client",
    "agentflow_dagster.rag.embed_service",
    "agentflow_dagster.rag.embedders",
    "opentelemetry.instrumentation.sqlalchemy",
    "opentelemetry.instrumentation.redis",
    "opentelemetry.instrumentation.kafka",
    # The SQLAlchemy instrumentation probes this optional module; without greenlet the import fails,
    # and a failure tried once here is cheap to repeat in each worker (its submodules stay loaded).
    "sqlalchemy.ext.asyncio",
)


def preload() -> list[str]:
    """Import MODULES; returns the ones that could not be imported (optional packages)."""
    missing = []
    for name in MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if "agentflow_dagster.llm.openai_compat" not in missing:
        from agentflow_dagster.llm.openai_compat import shared_ssl_context

        shared_ssl_context()  # the CA bundle, loaded once for every worker
        from agentflow_dagster.llm.types import estimate_tokens

        estimate_tokens("warm")  # the cl100k BPE (~0.15 s of CPU to load), once for every worker
        from agentflow_dagster.llm.pricing import cost_usd

        cost_usd("gpt-4o-mini", 1, 1, provider="openai")  # genai-prices' snapshot, parsed on first use
    if "boto3" not in missing:
        warm_botocore()
    return missing


def warm_botocore() -> None:
    """Build one S3 client on boto3's default session, which the workers inherit: the service model,
    endpoint rules and generated method names are then cached before the fork, and each worker's
    compute log manager builds its client from the caches. No request is sent, no credential looked up
    (explicit throwaway keys), no connection opened."""
    import boto3

    client = boto3.resource(
        "s3",
        endpoint_url="http://127.0.0.1:9",
        region_name="us-east-1",
        aws_access_key_id="preload",
        aws_secret_access_key="preload",  # noqa: S106  # nosec B106 - not a secret: never sent anywhere
        use_ssl=False,
    ).meta.client
    del client


with contextlib.suppress(Exception):  # a preload must never stop the forkserver
    preload()
