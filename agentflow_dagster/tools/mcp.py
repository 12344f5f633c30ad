"""MCP tool servers from agentflow.yaml (stdio command or streamable HTTP URL) through the official `mcp` SDK.

Calls go through one open session per server and process (tools/mcp_sessions.py). Listing happens
once, when the project loads, on a session of its own; a server that cannot be listed fails the load
with its name and the reason.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
from dataclasses import dataclass
from typing import Any

import jsonschema
import mcp
from mcp_types import CallToolResult, TextContent, ToolAnnotations

from agentflow_dagster.tools.decorator import (
    IDEMPOTENCY_KEY,
    SideEffects,
    Tool,
    ToolArgumentError,
    ToolDefinitionError,
    ToolExecutionError,
)
from agentflow_dagster.tools.mcp_config import McpServerConfig
from agentflow_dagster.tools.mcp_sessions import SESSIONS

# Sent in the request `_meta` of every call to an `external` MCP tool.
IDEMPOTENCY_META_KEY = "agentflow/idempotency_key"


def side_effects_of(annotations: ToolAnnotations | None) -> SideEffects:
    """From the server's hints: read-only is `none`, idempotent is `idempotent`; anything else `external`."""
    if annotations is not None and annotations.read_only_hint:
        return "none"
    if annotations is not None and annotations.idempotent_hint:
        return "idempotent"
    return "external"  # the conservative reading of a tool that says nothing


@dataclass(frozen=True, kw_only=True)
class McpTool(Tool):
    """A tool listed by an MCP server; arguments are checked against its input schema before any call."""

    server: McpServerConfig
    remote_name: str
    input_schema: dict[str, Any]

    def validate(self, arguments: Any) -> dict[str, Any]:
        errors = sorted(
            jsonschema.Draft202012Validator(self.parameters).iter_errors(arguments),
            key=lambda e: list(e.path),
        )
        if errors:
            raise ToolArgumentError(
                "; ".join(f"{'.'.join(map(str, e.path)) or '(root)'}: {e.message}" for e in errors[:8])
            )
        assert isinstance(arguments, dict)
        return arguments

    def invoke(self, arguments: dict[str, Any], idempotency_key: str | None, timeout_s: float | None) -> Any:
        args = dict(arguments)
        if IDEMPOTENCY_KEY in self.input_schema.get("properties", {}):
            args[IDEMPOTENCY_KEY] = idempotency_key
        external = idempotency_key and self.side_effects == "external"
        meta = {IDEMPOTENCY_META_KEY: idempotency_key} if external else None
        timeout = min(self.server.timeout_s, timeout_s) if timeout_s else self.server.timeout_s

        async def call(client: mcp.Client) -> CallToolResult:
            return await client.call_tool(self.remote_name, args, read_timeout_seconds=timeout, meta=meta)  # type: ignore[arg-type]

        server = self.server
        try:
            # Connecting (a stdio server starting) counts against the server's timeout, not the call's.
            result = SESSIONS.run(
                server.model_dump_json(), server.target(), server.timeout_s, call, timeout + server.timeout_s
            )
        except Exception as exc:
            raise ToolExecutionError(f"{server.where}: {type(exc).__name__}: {exc}") from exc
        return result_value(result, self.remote_name)


def result_value(result: CallToolResult, tool: str) -> Any:
    """Structured content if given, else its one text block (parsed when JSON), else all the text."""
    texts = [b.text for b in result.content if isinstance(b, TextContent)]
    if result.is_error:
        raise ToolExecutionError(f"MCP tool {tool!r} reported an error: {' '.join(texts)[:500]}")
    if result.structured_content is not None:
        return result.structured_content
    others = [b.type for b in result.content if not isinstance(b, TextContent)]
    if len(texts) == 1 and not others:
        try:  # servers often return JSON as text
            return json.loads(texts[0])
        except ValueError:
            return texts[0]
    return {"text": "\n".join(texts), **({"other_content": others} if others else {})}


def _model_schema(input_schema: dict[str, Any]) -> dict[str, Any]:
    """The schema the model is sent: the server's, without the idempotency key the platform supplies."""
    schema = copy.deepcopy(input_schema) or {"type": "object", "properties": {}}
    schema.get("properties", {}).pop(IDEMPOTENCY_KEY, None)
    if IDEMPOTENCY_KEY in schema.get("required", []):
        schema["required"] = [r for r in schema["required"] if r != IDEMPOTENCY_KEY]
    return schema


async def _list(server: McpServerConfig) -> list[Any]:
    async with mcp.Client(server.target(), read_timeout_seconds=server.timeout_s) as client:
        listed = await asyncio.wait_for(client.list_tools(), server.timeout_s + 5)
        return list(listed.tools)


def list_server_tools(server: McpServerConfig) -> list[McpTool]:
    """The tools of one server as registry entries; raises ToolDefinitionError naming the server."""
    try:
        listed = asyncio.run(_list(server))
    except Exception as exc:
        raise ToolDefinitionError(
            f"{server.where}: listing its tools failed ({type(exc).__name__}: {exc}); check that the "
            "command runs (or the URL answers) and speaks MCP"
        ) from exc
    names = {t.name for t in listed}
    wanted = server.tools if server.tools is not None else sorted(names)
    missing = [n for n in [*wanted, *server.side_effects, *server.requires_approval] if n not in names]
    if missing:
        raise ToolDefinitionError(
            f"{server.where}: agentflow.yaml names tools the server does not list: {sorted(set(missing))}; "
            f"it lists {sorted(names)}"
        )
    tools = []
    for remote in listed:
        if remote.name not in wanted:
            continue
        name = server.prefix + re.sub(r"[^a-zA-Z0-9_-]", "_", remote.name)
        side = server.side_effects.get(remote.name) or side_effects_of(remote.annotations)
        tools.append(
            McpTool(
                name=name,
                description=remote.description or remote.title or remote.name,
                parameters=_model_schema(remote.input_schema),
                side_effects=side,
                requires_approval=remote.name in server.requires_approval,
                source=f"{server.where} tool {remote.name!r}",
                server=server,
                remote_name=remote.name,
                input_schema=remote.input_schema,
            )
        )
    return tools


def load_mcp_tools(servers: list[McpServerConfig]) -> list[McpTool]:
    """Every tool of every configured server, in configuration order."""
    return [t for server in servers for t in list_server_tools(server)]
