"""The tools a project provides (Python and MCP) by name; a name defined twice is an error naming both."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from agentflow_dagster.agents.tools import RETRIEVAL
from agentflow_dagster.tools.decorator import Tool


class ToolNameClash(ValueError):
    """Two tools (or a tool and a built-in) share a name."""


class ToolRegistry:
    """Tools by name; agents are offered only the ones on their allow-list."""

    def __init__(self, tools: Iterable[Tool] = ()):
        self._tools: dict[str, Tool] = {}
        for one in tools:
            self.add(one)

    def add(self, tool: Tool) -> None:
        """Register `tool`; raises ToolNameClash naming both sources when the name is taken."""
        if tool.name == RETRIEVAL:
            raise ToolNameClash(
                f"tool {RETRIEVAL!r} ({tool.source}) clashes with the built-in retrieval tool; rename it"
            )
        existing = self._tools.get(tool.name)
        if existing is not None:
            raise ToolNameClash(
                f"tool name {tool.name!r} is defined twice: by {existing.source} and by {tool.source}; "
                "rename one (@tool(name=...)) or give the MCP server a `prefix`"
            )
        self._tools[tool.name] = tool

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def names(self) -> list[str]:
        return sorted(self._tools)

    def unknown(self, allow_list: Iterable[str]) -> list[str]:
        """Names on an allow-list that are neither registered nor built in (for validation messages)."""
        return sorted(n for n in allow_list if n != RETRIEVAL and n not in self._tools)

    def allowed(self, allow_list: Iterable[str]) -> list[Tool]:
        """The registered tools on `allow_list`, by name (what an agent is sent)."""
        return [self._tools[n] for n in sorted(set(allow_list)) if n in self._tools]

    def needs_approval(self, allow_list: Iterable[str]) -> bool:
        """Whether an agent with this allow-list may reach a tool that waits for approval."""
        return any(t.requires_approval for t in self.allowed(allow_list))
