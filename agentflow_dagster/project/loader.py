"""Load a project folder: agentflow.yaml -> tools -> agents -> workflows, each validated as it is read.

Every error is a ProjectError (or the workflow loader's SpecError) naming the file, the thing in it
and the field; `agentflow validate` prints it, and the code location fails to load with it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from agentflow_dagster.agents.roles import AgentRole, FramedPrompt, TemplateError
from agentflow_dagster.agents.tools import RETRIEVAL
from agentflow_dagster.errors import ProjectError
from agentflow_dagster.project.config import AgentConfig, ProjectConfig
from agentflow_dagster.project.schema_model import SchemaProblem, check_schema, model_from_schema
from agentflow_dagster.workflows.spec import SpecError, WorkflowSpec

CONFIG_FILE = "agentflow.yaml"
# Variables the prompt frame fills itself; a template may use them without the task providing them.
FRAME_VARIABLES = frozenset({"inputs", "retrieved", "schema"})
BUILTIN_TOOLS = frozenset({RETRIEVAL})


@dataclass
class Project:
    """A loaded, validated project."""

    root: Path
    config: ProjectConfig
    agents: dict[str, AgentRole]
    workflows: dict[str, WorkflowSpec]
    tools: Any = None  # agentflow_dagster.tools.registry.ToolRegistry
    fingerprint: str = ""
    files: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def settings(self) -> dict[str, Any]:
        return self.config.settings


def _field_of(exc: ValidationError) -> tuple[str, str]:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(root)"
    return loc, f"{err['msg']} (got {err.get('input')!r})"[:400]


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise ProjectError(str(path), None, None, f"not valid YAML{line}: {exc}") from None
    except OSError as exc:
        raise ProjectError(str(path), None, None, f"cannot read: {exc}") from None


def load_config(root: Path) -> ProjectConfig:
    """`agentflow.yaml` of `root`, validated."""
    path = root / CONFIG_FILE
    if not path.is_file():
        raise ProjectError(
            str(path),
            None,
            None,
            f"no {CONFIG_FILE}: is {root} a project? create one with `agentflow init DIR`",
        )
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise ProjectError(str(path), None, None, "must be a YAML mapping with at least `name`")
    try:
        return ProjectConfig.model_validate(raw)
    except ValidationError as exc:
        loc, msg = _field_of(exc)
        raise ProjectError(str(path), None, loc, msg) from None


def _import_module_file(path: Path, module_name: str) -> Any:
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ProjectError(str(path), None, None, "cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ProjectError(
            str(path), None, None, f"importing it failed: {type(exc).__name__}: {exc}"
        ) from exc
    return module


def load_tools(root: Path, config: ProjectConfig) -> Any:
    """The project's tool registry: decorated functions in tools/*.py and the MCP servers' tools."""
    from agentflow_dagster.tools.decorator import collect_tools
    from agentflow_dagster.tools.registry import ToolRegistry

    registry = ToolRegistry()
    package = f"agentflow_project_{config.name}"
    for path in sorted((root / "tools").glob("*.py")):
        if path.name.startswith("_"):
            continue
        module = _import_module_file(path, f"{package}.tools.{path.stem}")
        try:
            for python_tool in collect_tools(module):
                registry.add(python_tool)
        except (TypeError, ValueError) as exc:
            raise ProjectError(str(path), None, None, str(exc)) from exc
    for i, server in enumerate(config.mcp_servers):
        subject, field_name = f"MCP server {server.name!r}", f"mcp_servers[{i}]"
        try:
            from agentflow_dagster.tools.mcp import list_server_tools

            listed = list_server_tools(server)
        except Exception as exc:
            raise ProjectError(
                str(root / CONFIG_FILE), subject, field_name,
                f"listing its tools failed: {type(exc).__name__}: {exc}",
            ) from exc  # fmt: skip
        try:
            for mcp_tool in listed:
                registry.add(mcp_tool)
        except ValueError as exc:
            raise ProjectError(str(root / CONFIG_FILE), subject, field_name, str(exc)) from exc
    return registry


def _output_model(cfg: AgentConfig, file: str) -> type[BaseModel]:
    subject = f"agent {cfg.name!r}"
    if cfg.output_model is not None:
        module_name, _, attr = cfg.output_model.partition(":")
        try:
            model = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ProjectError(
                file, subject, "output_model",
                f"cannot import {cfg.output_model!r} ({exc}); use 'package.module:ClassName'",
            ) from None  # fmt: skip
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise ProjectError(file, subject, "output_model", f"{cfg.output_model!r} is not a pydantic model")
        return model
    assert cfg.output_schema is not None
    try:
        check_schema(cfg.output_schema, "output_schema")
        class_name = "".join(part.title() for part in cfg.name.split("_")) + "Output"
        return model_from_schema(class_name, cfg.output_schema)
    except SchemaProblem as exc:
        raise ProjectError(file, subject, "output_schema", str(exc)) from None


def _template(cfg: AgentConfig, root: Path, file: str) -> tuple[FramedPrompt, frozenset[str]]:
    subject = f"agent {cfg.name!r}"
    human = cfg.prompt
    where = "prompt"
    if cfg.prompt_file is not None:
        where = "prompt_file"
        path = (root / "prompts" / cfg.prompt_file).resolve()
        if not path.is_relative_to((root / "prompts").resolve()) or not path.is_file():
            raise ProjectError(file, subject, where, f"no template file prompts/{cfg.prompt_file} in {root}")
        human = path.read_text()
    prompt = FramedPrompt(cfg.system, human, cfg.prompt_format)
    try:
        names = prompt.variables()
    except TemplateError as exc:
        problem = str(exc)
        if not problem.startswith("template variables must be names"):
            problem = f"not a valid {cfg.prompt_format} template: {problem}"
        raise ProjectError(file, subject, where, problem) from None
    return prompt, names - FRAME_VARIABLES


def load_agent(path: Path, root: Path, tool_names: frozenset[str]) -> AgentRole:
    """One `agents/*.yaml` file as an AgentRole."""
    file = str(path)
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise ProjectError(
            file, None, None, "an agent must be a YAML mapping (name, system, output_schema, ...)"
        )
    subject = f"agent {raw.get('name')!r}" if raw.get("name") else None
    try:
        cfg = AgentConfig.model_validate(raw)
    except ValidationError as exc:
        loc, msg = _field_of(exc)
        raise ProjectError(file, subject, loc, msg) from None
    subject = f"agent {cfg.name!r}"
    if cfg.input_schema is not None:
        try:
            check_schema(cfg.input_schema, "input_schema")
        except SchemaProblem as exc:
            raise ProjectError(file, subject, "input_schema", str(exc)) from None
    known = tool_names | BUILTIN_TOOLS
    for i, tool in enumerate(cfg.tools):
        if tool not in known:
            raise ProjectError(
                file, subject, f"tools[{i}]",
                f"unknown tool {tool!r}; the project's tools: {', '.join(sorted(known))}",
            )  # fmt: skip
    if len(set(cfg.tools)) != len(cfg.tools):
        raise ProjectError(file, subject, "tools", "lists a tool twice")
    prompt, variables = _template(cfg, root, file)
    return AgentRole(
        name=cfg.name,
        description=cfg.description or cfg.system,
        prompt=prompt,
        output=_output_model(cfg, file),
        tools=frozenset(cfg.tools),
        profile=cfg.model.profile,
        max_schema_retries=cfg.max_schema_retries,
        max_output_tokens=cfg.model.max_tokens,
        max_prompt_tokens=cfg.max_prompt_tokens,
        model=cfg.model.name,
        temperature=cfg.model.temperature,
        fallback_model=cfg.model.fallback_model,
        max_tool_rounds=cfg.max_tool_rounds,
        retrieval_collection=cfg.retrieval.collection if cfg.retrieval else None,
        retrieval_k=cfg.retrieval.k if cfg.retrieval else None,
        input_schema=cfg.input_schema,
        template_variables=variables,
        source_file=file,
    )


def load_agents(root: Path, tool_names: frozenset[str]) -> dict[str, AgentRole]:
    """Every `agents/*.yaml` of the project, keyed by agent name."""
    agents: dict[str, AgentRole] = {}
    for path in sorted((root / "agents").glob("*.y*ml")):
        role = load_agent(path, root, tool_names)
        if role.name in agents:
            raise ProjectError(
                str(path), f"agent {role.name!r}", "name", f"also defined in {agents[role.name].source_file}"
            )
        agents[role.name] = role
    return agents


def check_templates(spec: WorkflowSpec, agents: Mapping[str, AgentRole]) -> None:
    """Each template variable of a task's agent must be one of the task's inputs."""
    for task in spec.tasks:
        for field_name, agent in (("agent", task.agent), ("fallback_agent", task.fallback_agent)):
            if agent is None:
                continue
            missing = sorted(agents[agent].template_variables - set(task.inputs))
            if missing:
                raise SpecError(
                    spec.source_file, task.task_id, field_name,
                    f"agent {agent!r} ({agents[agent].source_file}) reads template variable(s) {missing} "
                    f"that the task's inputs do not provide; add them under `inputs`",
                )  # fmt: skip


DEFINITION_PARTS = ("agents", "tools", "workflows", "prompts")


def fingerprint(root: Path) -> tuple[str, list[str]]:
    """A digest of the project's definition files (what a reload compares; data tools write is not)."""
    digest = hashlib.sha256()
    candidates = [root / CONFIG_FILE, *(p for part in DEFINITION_PARTS for p in (root / part).rglob("*"))]
    files = sorted(
        p for p in candidates if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".")
    )
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16], [str(p.relative_to(root)) for p in files]


def load_project(root: str | Path) -> Project:
    """Load and validate the project in `root`."""
    from agentflow_dagster.workflows.loader import load_specs

    root = Path(root).resolve()
    if not root.is_dir():
        raise ProjectError(str(root), None, None, "project folder not found (AGENTFLOW_PROJECT_DIR)")
    config = load_config(root)
    tools = load_tools(root, config)
    agents = load_agents(root, frozenset(tools.names()))
    if not agents:
        raise ProjectError(str(root / "agents"), None, None, "the project defines no agents (agents/*.yaml)")
    workflows = load_specs(root / "workflows", agents=agents)
    for spec in workflows.values():
        check_templates(spec, agents)
    digest, files = fingerprint(root)
    return Project(root, config, agents, workflows, tools, digest, files)
