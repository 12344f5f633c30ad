"""`@tool` derives the argument schema from hints and docstring; the registry refuses a name defined twice."""

from __future__ import annotations

from typing import Literal

import pytest

from agentflow_dagster.tools import ToolNameClash, ToolRegistry, collect_tools, tool, tool_of
from agentflow_dagster.tools.decorator import ToolArgumentError, ToolDefinitionError, build_tool


@tool(side_effects="external", requires_approval=True)
def send_email(
    to: str, subject: str, urgency: Literal["low", "high"] = "low", *, idempotency_key: str
) -> str:
    """Send an email to a customer.

    Args:
        to: recipient address
        subject: the subject line
        urgency: how soon it must go out
    """
    return f"sent {subject} to {to} ({idempotency_key})"


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def test_schema_comes_from_hints_and_docstring() -> None:
    spec = tool_of(send_email)
    assert spec is not None and spec.side_effects == "external" and spec.requires_approval
    assert spec.description == "Send an email to a customer."
    params = spec.parameters
    assert params["required"] == ["to", "subject"]
    assert params["properties"]["to"] == {"description": "recipient address", "title": "To", "type": "string"}
    assert params["properties"]["urgency"]["enum"] == ["low", "high"]
    # The platform supplies the key; the model is never shown it and cannot pass it.
    assert "idempotency_key" not in params["properties"] and params["additionalProperties"] is False
    assert spec.openai_tool()["function"]["name"] == "send_email"
    # The decorated function stays an ordinary function.
    assert add(2, 3) == 5


def test_validation_names_the_field() -> None:
    spec = tool_of(send_email)
    assert spec is not None
    with pytest.raises(ToolArgumentError, match="urgency"):
        spec.validate({"to": "a@b.c", "subject": "s", "urgency": "whenever"})
    with pytest.raises(ToolArgumentError, match="idempotency_key: Extra inputs are not permitted"):
        spec.validate({"to": "a@b.c", "subject": "s", "idempotency_key": "forged"})
    assert (
        spec.invoke(spec.validate({"to": "a@b.c", "subject": "hi"}), "k-1", None) == "sent hi to a@b.c (k-1)"
    )


def test_definition_errors_say_how_to_fix() -> None:
    def no_key(to: str) -> None:
        """Send."""

    with pytest.raises(
        ToolDefinitionError, match="side_effects='external' needs a parameter `idempotency_key"
    ):
        build_tool(no_key, side_effects="external")

    def untyped(x):  # type: ignore[no-untyped-def]
        """Untyped."""

    with pytest.raises(ToolDefinitionError, match="argument 'x' has no type hint"):
        build_tool(untyped)

    def undocumented(x: int) -> int:
        return x

    with pytest.raises(ToolDefinitionError, match="no description"):
        build_tool(undocumented)
    with pytest.raises(ToolDefinitionError, match="side_effects='sometimes'"):
        build_tool(add, side_effects="sometimes")  # type: ignore[arg-type]


def test_registry_clash_names_both_sources() -> None:
    import sys

    registry = ToolRegistry(collect_tools(sys.modules[__name__]))
    assert registry.names() == ["add", "send_email"]

    def other_add(a: int) -> int:
        """Another add."""
        return a

    with pytest.raises(ToolNameClash) as info:
        registry.add(build_tool(other_add, name="add"))
    message = str(info.value)
    assert "tool name 'add' is defined twice" in message
    assert f"python:{__name__}.add" in message and "other_add" in message
    with pytest.raises(ToolNameClash, match="built-in retrieval"):
        registry.add(build_tool(other_add, name="retrieval"))
    assert registry.unknown({"add", "retrieval", "nope"}) == ["nope"]
    assert [t.name for t in registry.allowed({"send_email", "nope"})] == ["send_email"]
    assert registry.needs_approval({"send_email"}) and not registry.needs_approval({"add"})


def test_async_tools_are_awaited() -> None:
    async def double(x: int) -> int:
        """Double a number."""
        return 2 * x

    built = build_tool(double)
    assert built.invoke(built.validate({"x": 4}), None, 5) == 8
