"""`@tool`: a typed function becomes an agent tool; its argument schema comes from its hints and docstring."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal, TypeVar, overload

import docstring_parser
import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

SideEffects = Literal["none", "idempotent", "external"]
SIDE_EFFECTS: tuple[str, ...] = typing.get_args(SideEffects)
# The parameter through which an `external` tool receives the key it passes on to the outside system.
IDEMPOTENCY_KEY = "idempotency_key"
# OpenAI's rule for function names; MCP names are held to it too, so every tool can be offered.
NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_ATTR = "__agentflow_tool__"
F = TypeVar("F", bound=Callable[..., Any])


class ToolDefinitionError(TypeError):
    """A tool cannot be built as declared (the message names the function and the fix)."""


class ToolArgumentError(ValueError):
    """Arguments a model proposed do not validate against the tool's schema."""


class ToolExecutionError(RuntimeError):
    """The tool ran and failed (an exception, or an MCP result marked as an error)."""


def short_validation_error(exc: ValidationError) -> str:
    """`field: message` pairs of a pydantic error, at most eight, for a model to correct."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()[:8]
    )


def to_jsonable(value: Any) -> Any:
    """A tool's return value as JSON data (pydantic models, dataclasses and dates included)."""
    return pydantic_core.to_jsonable_python(value, fallback=str)


@dataclass(frozen=True, kw_only=True)
class Tool(ABC):
    """What the runner needs of any tool, Python or MCP."""

    name: str
    description: str
    parameters: dict[str, Any]
    side_effects: SideEffects = "none"
    requires_approval: bool = False
    source: str = ""

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name):
            raise ToolDefinitionError(
                f"tool {self.name!r} ({self.source}): the name must match {NAME_RE.pattern} "
                "(letters, digits, _ and -, at most 64); pass another name"
            )
        if self.side_effects not in SIDE_EFFECTS:
            raise ToolDefinitionError(
                f"tool {self.name!r} ({self.source}): side_effects={self.side_effects!r}; "
                f"choose one of {', '.join(SIDE_EFFECTS)}"
            )

    def openai_tool(self) -> dict[str, Any]:
        """The chat-completions `tools` entry offered to the model."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    @abstractmethod
    def validate(self, arguments: Any) -> dict[str, Any]:
        """The arguments normalized to JSON data; raises ToolArgumentError naming the bad fields."""

    @abstractmethod
    def invoke(self, arguments: dict[str, Any], idempotency_key: str | None, timeout_s: float | None) -> Any:
        """Run the tool once with validated arguments; returns JSON data or raises ToolExecutionError."""


@dataclass(frozen=True, kw_only=True)
class PythonTool(Tool):
    """A decorated function; `arguments` is the pydantic model built from its signature."""

    fn: Callable[..., Any]
    arguments: type[BaseModel]
    takes_key: bool = False

    def validate(self, arguments: Any) -> dict[str, Any]:
        try:
            return self.arguments.model_validate(arguments).model_dump(mode="json")
        except ValidationError as exc:
            raise ToolArgumentError(short_validation_error(exc)) from None

    def invoke(self, arguments: dict[str, Any], idempotency_key: str | None, timeout_s: float | None) -> Any:
        parsed = self.arguments.model_validate(arguments)
        kwargs = {name: getattr(parsed, name) for name in type(parsed).model_fields}
        if self.takes_key:
            kwargs[IDEMPOTENCY_KEY] = idempotency_key
        try:
            value = self.fn(**kwargs)
            if inspect.isawaitable(value):
                value = asyncio.run(_bounded(value, timeout_s))
        except Exception as exc:
            raise ToolExecutionError(f"{type(exc).__name__}: {exc}") from exc
        return to_jsonable(value)


async def _bounded(awaitable: Any, timeout_s: float | None) -> Any:
    return await asyncio.wait_for(awaitable, timeout_s)


def _arguments_model(fn: Callable[..., Any], name: str, docs: dict[str, str]) -> tuple[type[BaseModel], bool]:
    """The arguments model of `fn` (unknown fields forbidden) and whether it takes the idempotency key."""
    where = f"{fn.__module__}.{fn.__qualname__}"
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:  # a hint naming something not importable at run time
        raise ToolDefinitionError(f"tool {name!r} ({where}): cannot resolve its type hints: {exc}") from exc
    fields: dict[str, Any] = {}
    takes_key = False
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolDefinitionError(
                f"tool {name!r} ({where}): *{param.name} cannot be described to a model; "
                "declare each argument with a type hint"
            )
        if param.name == IDEMPOTENCY_KEY:
            takes_key = True  # supplied by the platform, never by the model
            continue
        if param.name not in hints:
            raise ToolDefinitionError(
                f"tool {name!r} ({where}): argument {param.name!r} has no type hint; annotate it "
                "(the model is sent a JSON Schema built from the hints)"
            )
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (hints[param.name], Field(default, description=docs.get(param.name)))
    model = create_model(  # type: ignore[call-overload]
        f"{name}_arguments", __config__=ConfigDict(extra="forbid"), **fields
    )
    return model, takes_key


def build_tool(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    side_effects: SideEffects = "none",
    requires_approval: bool = False,
) -> PythonTool:
    """The PythonTool for `fn` (what `@tool` attaches to it)."""
    tool_name = name or fn.__name__
    doc = docstring_parser.parse(inspect.getdoc(fn) or "")
    text = description or "\n\n".join(p for p in (doc.short_description, doc.long_description) if p)
    where = f"{fn.__module__}.{fn.__qualname__}"
    if not text:
        raise ToolDefinitionError(
            f"tool {tool_name!r} ({where}): no description; write a docstring or pass description= "
            "(the model chooses tools by it)"
        )
    model, takes_key = _arguments_model(fn, tool_name, {p.arg_name: p.description or "" for p in doc.params})
    if side_effects == "external" and not takes_key:
        raise ToolDefinitionError(
            f"tool {tool_name!r} ({where}): side_effects='external' needs a parameter "
            f"`{IDEMPOTENCY_KEY}: str` to pass on to the outside system (the same key on every retry)"
        )
    schema = model.model_json_schema()
    schema.pop("title", None)
    return PythonTool(
        name=tool_name,
        description=text,
        parameters=schema,
        side_effects=side_effects,
        requires_approval=requires_approval,
        source=f"python:{where}",
        fn=fn,
        arguments=model,
        takes_key=takes_key,
    )


@overload
def tool(fn: F, /) -> F: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    side_effects: SideEffects = "none",
    requires_approval: bool = False,
) -> Callable[[F], F]: ...


def tool(
    fn: F | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    side_effects: SideEffects = "none",
    requires_approval: bool = False,
) -> F | Callable[[F], F]:
    """Mark a function as an agent tool; the function itself is returned unchanged (still callable)."""

    def mark(f: F) -> F:
        built = build_tool(
            f, name=name, description=description, side_effects=side_effects,
            requires_approval=requires_approval,
        )  # fmt: skip
        setattr(f, _ATTR, built)
        return f

    return mark(fn) if fn is not None else mark


def tool_of(obj: Any) -> PythonTool | None:
    """The tool a decorated function carries, else None."""
    found = getattr(obj, _ATTR, None)
    return found if isinstance(found, PythonTool) else None


def collect_tools(module: ModuleType) -> list[PythonTool]:
    """The tools defined in `module` (not those it imports from elsewhere), in definition order."""
    return [
        t
        for value in vars(module).values()
        if (t := tool_of(value)) is not None and getattr(value, "__module__", None) == module.__name__
    ]


def parse_arguments(raw: str | dict[str, Any] | None) -> dict[str, Any]:
    """A model's `arguments` string as a JSON object; raises ToolArgumentError when it is not one."""
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw or "{}")
    except json.JSONDecodeError as exc:
        raise ToolArgumentError(f"arguments are not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ToolArgumentError(f"arguments must be a JSON object, got {type(value).__name__}")
    return value
