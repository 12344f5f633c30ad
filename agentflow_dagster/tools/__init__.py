"""Agent tools: Python functions (`@tool`) and MCP servers in one registry, each call run at most once."""

from agentflow_dagster.tools.decorator import SideEffects, Tool, collect_tools, tool, tool_of
from agentflow_dagster.tools.registry import ToolNameClash, ToolRegistry

__all__ = ["SideEffects", "Tool", "ToolNameClash", "ToolRegistry", "collect_tools", "tool", "tool_of"]
