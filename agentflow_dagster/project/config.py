"""The formats a team writes: `agentflow.yaml` and `agents/*.yaml` (docs/projects.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agentflow_dagster.tools.mcp_config import McpServerConfig

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"


class ProjectConfig(BaseModel):
    """`agentflow.yaml`: the project's name, its default model and model profiles, MCP servers, settings."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    # Default model for every agent without its own; AGENTFLOW_MODEL overrides it at run time.
    model: str | None = None
    # Profile name -> model name; agents pick a profile (default, fast, reasoning, ...).
    models: dict[str, str] = Field(default_factory=dict)
    mcp_servers: list[McpServerConfig] = Field(default_factory=list)
    # Free-form values the project's tools may read (agentflow_dagster.project.current_project().settings).
    settings: dict[str, Any] = Field(default_factory=dict)


class ModelProfile(BaseModel):
    """Which model an agent uses and how it is sampled."""

    model_config = ConfigDict(extra="forbid")

    profile: str = "default"
    name: str | None = Field(default=None, description="a model name; overrides the profile's model")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(default=1024, ge=1, le=65536)
    fallback_model: str | None = None


class RetrievalDefaults(BaseModel):
    """What a task's `retrieval` block does not say: the collection searched and how many passages."""

    model_config = ConfigDict(extra="forbid")

    collection: str | None = Field(default=None, pattern=NAME_PATTERN)
    k: int | None = Field(default=None, ge=1, le=50)


class AgentConfig(BaseModel):
    """`agents/<name>.yaml`: an agent is a prompt, an input and an output contract, a model and tools."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    system: str = Field(min_length=1, description="the system prompt: role and instructions")
    prompt: str | None = Field(default=None, description="the human turn's template (task inputs by name)")
    prompt_file: str | None = Field(default=None, description="a template file under prompts/")
    prompt_format: Literal["f-string", "jinja2"] = "f-string"
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    output_model: str | None = Field(default=None, description="a pydantic model, 'package.module:Class'")
    model: ModelProfile = Field(default_factory=ModelProfile)
    tools: list[str] = Field(default_factory=list)
    retrieval: RetrievalDefaults | None = None
    max_tool_rounds: int = Field(default=4, ge=0, le=32)
    max_schema_retries: int = Field(default=2, ge=0, le=10)
    max_prompt_tokens: int = Field(default=16_000, ge=100, le=2_000_000)

    @model_validator(mode="after")
    def _one_output(self) -> AgentConfig:
        if (self.output_schema is None) == (self.output_model is None):
            raise ValueError(
                "give exactly one of `output_schema` (JSON Schema) or `output_model` (import path)"
            )
        if self.prompt is not None and self.prompt_file is not None:
            raise ValueError("give `prompt` or `prompt_file`, not both")
        if self.retrieval is not None and "retrieval" not in self.tools:
            raise ValueError("retrieval settings need `retrieval` in the agent's tools")
        return self
