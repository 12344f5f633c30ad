"""Settings read from the environment (prefix AGENTFLOW_, standard names where they exist)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the platform; the embedded default is what `agentflow up` starts."""

    model_config = SettingsConfigDict(env_prefix="AGENTFLOW_", extra="ignore")

    data_dir: Path = Path(".agentflow")
    # External services: when set, `agentflow up` uses them instead of starting its own.
    postgres_url: str | None = None
    redis_url: str | None = None
    kafka_bootstrap_servers: str | None = None
    s3_endpoint: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_secure: bool = False
    opensearch_url: str | None = None

    # Ports for the embedded stack (0 = the defaults below).
    postgres_port: int = 55432
    redis_port: int = 56379
    kafka_port: int = 59092
    webserver_port: int = 3000
    metrics_port: int = 9464
    # The embedded SeaweedFS: S3 on this port, its master/volume/filer on the next three, and each of the
    # four + 10000 for gRPC (so all must stay below 55535; the default keeps all 8 below the ephemeral range).
    s3_port: int = Field(default=18333, ge=1024, le=55531)

    kafka_partitions: int = 4
    max_event_bytes: int = 256 * 1024
    inline_input_limit: int = 8 * 1024
    # Input + output tokens one workflow instance (plan) may spend across all its tasks, retries and
    # re-executions; 0 = no cap. Checked before every LLM call (ops/budget.py).
    max_tokens_per_workflow: int = Field(default=200_000, ge=0)
    # How often the sensor daemon looks for due sensors (Dagster's own loop is fixed at 5 s); the
    # request sensor's minimum interval (1 s) still spaces its ticks. See agentflow_dagster/instance.
    sensor_loop_seconds: float = Field(default=0.5, gt=0, le=5)
    # The request sensor's long poll: an idle tick keeps reading for this long (sensors/kafka_reader.py).
    request_poll_seconds: float = Field(default=3.0, ge=0, le=15)
    # How often the daemon replaces its code server even when nothing changed (Dagster: every 60 s, a
    # new process importing the code location each time). A change of the project's files triggers a
    # refresh within ~5 s regardless (agentflow_dagster/instance/daemon.py).
    workspace_refresh_seconds: float = Field(default=3600, ge=5)
    # The run queue daemon launches a run as soon as the daemon's sensors queued it (false: it waits
    # for its next dequeue interval, as stock Dagster). agentflow_dagster/instance/daemon.py.
    dequeue_on_submit: bool = True

    # The model every agent uses unless it names its own (overrides the project's profiles).
    model: str | None = None
    # The user project the code location serves (default: the shipped example project).
    project_dir: Path | None = None

    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_BASE_URL", "AGENTFLOW_OPENAI_BASE_URL")
    )
    openai_api_key: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "AGENTFLOW_OPENAI_API_KEY")
    )
    # One model name for every agent profile, and how structured output is asked for (docs/llm.md).
    llm_model: str | None = None
    llm_response_format: Literal["json_schema", "json_object", "json_object_schema", "none"] = "json_schema"
    # The optional local llama.cpp server `agentflow up` starts when a GGUF file is given (docs/llm.md).
    llm_gguf: Path | None = None
    llm_port: int = 0  # 0 = a free port, recorded in stack.json
    llm_chat_format: str = ""  # "" = the GGUF file's chat template; "chatml-function-calling" for tools
    llm_server_args: str = ""  # more `python -m llama_cpp.server` options, e.g. "--n_ctx 8192"

    @property
    def data_path(self) -> Path:
        return self.data_dir.resolve()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (tests build their own `Settings`)."""
    return Settings()
