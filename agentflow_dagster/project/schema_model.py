"""Agent output contracts written as JSON Schema become pydantic models that enforce the whole schema."""

from __future__ import annotations

import re
from typing import Any, Literal

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

_TYPES: dict[str, Any] = {"string": str, "integer": int, "number": float, "boolean": bool, "null": type(None)}
_FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SchemaProblem(ValueError):
    """The schema is not valid JSON Schema, or not an object schema an agent can answer with."""


def check_schema(schema: Any, where: str) -> None:
    """Raise SchemaProblem naming `where` when `schema` is not valid JSON Schema (Draft 2020-12 rules)."""
    if not isinstance(schema, dict):
        raise SchemaProblem(f"{where}: must be a JSON Schema mapping, got {type(schema).__name__}")
    try:
        jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(
            schema
        )
    except jsonschema.SchemaError as exc:
        path = "/".join(str(p) for p in exc.path) or "(root)"
        raise SchemaProblem(f"{where}: not valid JSON Schema at {path}: {exc.message}") from None


def _annotation(name: str, schema: dict[str, Any], defs: dict[str, Any]) -> Any:
    while "$ref" in schema:
        ref = str(schema["$ref"])
        if not ref.startswith("#/$defs/"):
            return Any
        schema = {**defs.get(ref.split("/")[-1], {}), **{k: v for k, v in schema.items() if k != "$ref"}}
    if "enum" in schema and schema["enum"]:
        return Literal[tuple(schema["enum"])]
    kind = schema.get("type")
    if isinstance(kind, list):
        options = [_annotation(name, {**schema, "type": k}, defs) for k in kind]
        union = options[0]
        for option in options[1:]:
            union = union | option
        return union
    if kind == "object" and "properties" in schema:
        return _object_model(name.title().replace("_", ""), schema, defs)
    if kind == "object":
        return dict[str, Any]
    if kind == "array":
        return list[_annotation(name, schema.get("items") or {}, defs)]  # type: ignore[misc]
    return _TYPES.get(str(kind), Any)


def _object_model(name: str, schema: dict[str, Any], defs: dict[str, Any]) -> type[BaseModel]:
    required = set(schema.get("required", []))
    fields: dict[str, Any] = {}
    for prop, sub in (schema.get("properties") or {}).items():
        if not _FIELD_RE.match(prop):
            raise SchemaProblem(f"property {prop!r} is not a valid field name (letters, digits, _)")
        annotation = _annotation(prop, sub, defs)
        default: Any = ... if prop in required else sub.get("default")
        if prop not in required and "default" not in sub:
            annotation = annotation | None
        fields[prop] = (annotation, Field(default=default, description=sub.get("description")))
    return create_model(name, __config__=ConfigDict(extra="ignore"), **fields)


def model_from_schema(name: str, schema: dict[str, Any]) -> type[BaseModel]:
    """A pydantic model of an object schema; validation also runs the full JSON Schema on the raw answer."""
    if schema.get("type") != "object" or not isinstance(schema.get("properties"), dict):
        raise SchemaProblem("an output schema must be an object schema with `properties`")
    shape = _object_model(name, schema, schema.get("$defs", {}))
    validator = jsonschema.Draft202012Validator(schema)

    def _full_schema(cls: type[BaseModel], data: Any) -> Any:
        errors = sorted(validator.iter_errors(data), key=lambda e: list(e.path))
        if errors:
            first = errors[0]
            path = ".".join(str(p) for p in first.path) or "(root)"
            raise ValueError(f"{path}: {first.message}")
        return data

    check = model_validator(mode="before")(classmethod(_full_schema))  # type: ignore[arg-type]
    validators: dict[str, Any] = {"_full_schema": check}
    model = create_model(name, __base__=shape, __validators__=validators)
    # The schema the model is asked to answer with is the author's, not pydantic's rendering of it.
    model.__agentflow_json_schema__ = schema  # type: ignore[attr-defined]
    return model
