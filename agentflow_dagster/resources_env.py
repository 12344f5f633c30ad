"""The resource set for this environment: addresses from AGENTFLOW_* settings, secrets through EnvVar."""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from agentflow_dagster.clients import kafka_bootstrap, object_store_config, postgres_url
from agentflow_dagster.settings import Settings
from resources.embeddings import EmbeddingsResource
from resources.kafka import KafkaResource
from resources.llm import DEFAULT_MODELS, LLMResource
from resources.object_store import ObjectStoreResource
from resources.postgres import PostgresResource
from resources.redis import RedisResource
from resources.vector_store import VectorStoreResource


def _secret(name: str) -> Any:
    """An EnvVar when the variable is set (never rendered in the UI), else empty."""
    return dg.EnvVar(name) if os.environ.get(name) else ""


def build_resources(settings: Settings) -> dict[str, Any]:
    """Resources keyed by the names ops, assets and sensors ask for."""
    pg_url = postgres_url(settings)
    return {
        "postgres": PostgresResource(url=pg_url),
        "redis": RedisResource(url=settings.redis_url or f"redis://127.0.0.1:{settings.redis_port}/0"),
        "kafka": KafkaResource(bootstrap_servers=kafka_bootstrap(settings)),
        "object_store": ObjectStoreResource(
            access_key=_secret("AGENTFLOW_S3_ACCESS_KEY"),
            secret_key=_secret("AGENTFLOW_S3_SECRET_KEY"),
            **object_store_config(settings),
        ),
        # No endpoint and no key configured: the labelled offline-extractive provider answers instead.
        "llm": llm_resource(settings),
        **rag_resources(settings, pg_url),
    }


def llm_resource(settings: Settings) -> LLMResource:
    """The LLM resource: endpoint and key from OPENAI_*, models from the project and AGENTFLOW_MODEL."""
    from agentflow_dagster.project import project_dir
    from agentflow_dagster.project.loader import load_config

    # Only agentflow.yaml: building resources (status, ingest, migrations) must not import the
    # project's tools or start its MCP servers.
    config = load_config(project_dir())
    return LLMResource(
        base_url=_secret("OPENAI_BASE_URL") or (settings.openai_base_url or ""),
        api_key=_secret("OPENAI_API_KEY"),
        models={**DEFAULT_MODELS, **config.models},
        default_model=config.model or "",
        # The stack's local model server (`up --llm-gguf` sets AGENTFLOW_LLM_MODEL) serves one model,
        # whatever name is asked for: its name wins, so calls are recorded under it; else AGENTFLOW_MODEL.
        model_override=settings.llm_model or settings.model or "",
        response_format=settings.llm_response_format,
    )


def rag_resources(settings: Settings, postgres_url: str) -> dict[str, Any]:
    """Embeddings (AGENTFLOW_EMBEDDINGS_PROVIDER=openai for an API); vector store (OpenSearch when set)."""
    provider = os.environ.get("AGENTFLOW_EMBEDDINGS_PROVIDER", "local")
    return {
        "embeddings": EmbeddingsResource(
            provider=provider,
            model=os.environ.get("AGENTFLOW_EMBEDDINGS_MODEL", "all-MiniLM-L6-v2"),
            base_url=(settings.openai_base_url or "") if provider == "openai" else "",
            api_key=_secret("OPENAI_API_KEY") if provider == "openai" else "",
        ),
        "vector_store": VectorStoreResource(
            backend="opensearch" if settings.opensearch_url else "pgvector",
            postgres_url=postgres_url,
            opensearch_url=settings.opensearch_url or "",
            opensearch_username=os.environ.get("AGENTFLOW_OPENSEARCH_USERNAME", ""),
            opensearch_password=_secret("AGENTFLOW_OPENSEARCH_PASSWORD"),
        ),
    }
