"""An `mcp_servers` entry of agentflow.yaml, apart from the MCP SDK: loading a project's config (which
`agentflow status` and `submit` do) does not import `mcp` (about 0.4-0.8 s) unless a server is listed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agentflow_dagster.tools.decorator import SideEffects

if TYPE_CHECKING:
    import mcp

_SERVER_NAME_RE = r"^[a-z][a-z0-9_-]{0,63}$"


class McpServerConfig(BaseModel):
    """One entry of `mcp_servers` in agentflow.yaml."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_SERVER_NAME_RE)
    command: list[str] | None = Field(default=None, description="stdio server: the argv to launch")
    url: str | None = Field(default=None, description="streamable HTTP endpoint, e.g. http://host:8000/mcp")
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    prefix: str = Field(default="", description="prepended to each tool name (avoids clashes)")
    tools: list[str] | None = Field(default=None, description="only these tools of the server (default all)")
    side_effects: dict[str, SideEffects] = Field(
        default_factory=dict, description="per tool; default from the server's hints, else external"
    )
    requires_approval: list[str] = Field(default_factory=list)
    timeout_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError(
                f"MCP server {self.name!r}: set exactly one of `command` (stdio) or `url` (HTTP)"
            )
        if self.command is not None and not self.command:
            raise ValueError(f"MCP server {self.name!r}: `command` is empty; give the argv to launch")
        return self

    def target(self) -> mcp.StdioServerParameters | str:
        """What `mcp.Client` connects to."""
        import mcp

        if self.url is not None:
            return self.url
        assert self.command is not None
        return mcp.StdioServerParameters(
            command=self.command[0], args=self.command[1:], env=self.env or None, cwd=self.cwd
        )

    @property
    def where(self) -> str:
        return f"mcp:{self.name} ({self.url or ' '.join(self.command or [])})"
