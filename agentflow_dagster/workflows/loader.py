"""Load workflow specs from YAML, validate them as graphs, and record them in Postgres."""

from __future__ import annotations

import json
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ValidationError

from agentflow_dagster.agents.roles import AGENTS, AgentRole
from agentflow_dagster.agents.tools import RETRIEVAL
from agentflow_dagster.workflows.spec import (
    REF_RE,
    RESERVED_TASK_IDS,
    InputField,
    SpecError,
    TaskSpec,
    WorkflowSpec,
)

if TYPE_CHECKING:
    import sqlalchemy as sa

# The shipped workflows: the example project's (agentflow_dagster/example_project).
SPECS_DIR = Path(__file__).resolve().parents[1] / "example_project" / "workflows"


def _loc(err: Any) -> str:
    return ".".join(str(p) for p in err["loc"]) or "(root)"


def _first_error(exc: ValidationError) -> tuple[str, str]:
    err = exc.errors()[0]
    return _loc(err), f"{err['msg']} (got {err.get('input')!r})"


def _parse(raw: Any, file: str) -> WorkflowSpec:
    if not isinstance(raw, dict):
        raise SpecError(
            file, None, None, "a spec must be a YAML mapping with name, version, inputs and tasks"
        )
    raw = dict(raw)
    raw_inputs = raw.pop("inputs", None) or {}
    if not isinstance(raw_inputs, dict):
        raise SpecError(
            file, None, "inputs", "inputs must be a mapping of input name to {type, required, ...}"
        )
    inputs: list[InputField] = []
    for name, body in raw_inputs.items():
        try:
            inputs.append(InputField.model_validate({"name": name, **(body or {})}))
        except (ValidationError, TypeError) as exc:
            detail = _first_error(exc) if isinstance(exc, ValidationError) else ("", str(exc))
            raise SpecError(file, None, f"inputs.{name}.{detail[0]}".rstrip("."), detail[1]) from exc
    raw_tasks = raw.pop("tasks", None)
    if not isinstance(raw_tasks, list) or not raw_tasks:
        raise SpecError(file, None, "tasks", "a spec needs a non-empty list of tasks")
    tasks: list[TaskSpec] = []
    for i, body in enumerate(raw_tasks):
        label = str(body.get("task_id")) if isinstance(body, dict) and body.get("task_id") else f"tasks[{i}]"
        try:
            tasks.append(TaskSpec.model_validate(body))
        except ValidationError as exc:
            field, msg = _first_error(exc)
            raise SpecError(file, label, field, msg) from exc
    try:
        return WorkflowSpec.model_validate({**raw, "inputs": inputs, "tasks": tasks, "source_file": file})
    except ValidationError as exc:
        field, msg = _first_error(exc)
        raise SpecError(file, None, field, msg) from exc


def _is_list_field(model: type[BaseModel], field: str) -> bool:
    annotation = model.model_fields[field].annotation
    return typing.get_origin(annotation) is list


def _check_ref(
    spec: WorkflowSpec, task: TaskSpec, field: str, value: Any, file: str, agents: Mapping[str, AgentRole]
) -> None:
    if not (isinstance(value, str) and value.startswith("$")):
        return
    match = REF_RE.match(value)
    if not match:
        raise SpecError(
            file,
            task.task_id,
            field,
            f"bad reference {value!r}; use $request.<input>, $tasks.<id>[.<field>] or $item",
        )
    scope, name, out_field = match["scope"], match["name"], match["field"]
    if scope == "item":
        if name or task.fan_out is None:
            raise SpecError(file, task.task_id, field, "$item is only valid (alone) in a task with fan_out")
    elif scope == "request":
        declared = {f.name for f in spec.inputs}
        if not name or out_field or name not in declared:
            raise SpecError(
                file,
                task.task_id,
                field,
                f"{value!r} is not a declared input; declared inputs: {sorted(declared) or 'none'}",
            )
    else:
        if not name or name not in spec.task_ids:
            raise SpecError(file, task.task_id, field, f"{value!r} refers to an unknown task")
        if name not in task.depends_on:
            raise SpecError(file, task.task_id, field, f"{value!r} reads task {name!r}: add it to depends_on")
        upstream = agents[spec.task(name).agent].output
        if out_field and out_field not in upstream.model_fields:
            raise SpecError(
                file,
                task.task_id,
                field,
                f"{value!r}: agent {spec.task(name).agent!r} outputs no field {out_field!r}; "
                f"it has {sorted(upstream.model_fields)}",
            )


def _check_cycles(spec: WorkflowSpec, file: str) -> None:
    deps = {t.task_id: t.depends_on for t in spec.tasks}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in deps[node]:
            if state.get(dep) == 1:
                cycle = path[path.index(dep) :] + [node, dep] if dep in path else [node, dep]
                raise SpecError(file, dep, "depends_on", "dependency cycle: " + " -> ".join(cycle))
            if state.get(dep) is None:
                visit(dep, [*path, node])
        state[node] = 2

    for task_id in deps:
        if task_id not in state:
            visit(task_id, [])


def validate_spec(
    spec: WorkflowSpec, file: str, agents: Mapping[str, AgentRole] | None = None
) -> WorkflowSpec:
    """Check the graph against `agents` (default: the current project's): ids, agents, refs, tools, cycles."""
    agents = AGENTS if agents is None else agents
    seen: set[str] = set()
    for task in spec.tasks:
        if task.task_id in seen:
            raise SpecError(file, task.task_id, "task_id", "duplicate task_id; task ids must be unique")
        if task.task_id in RESERVED_TASK_IDS:
            raise SpecError(
                file, task.task_id, "task_id", f"reserved name; avoid {sorted(RESERVED_TASK_IDS)}"
            )
        seen.add(task.task_id)
    fanned = spec.fanned_tasks()
    for task in spec.tasks:
        for field, name in (("agent", task.agent), ("fallback_agent", task.fallback_agent)):
            if name is not None and name not in agents:
                raise SpecError(file, task.task_id, field, f"unknown agent {name!r}; known: {sorted(agents)}")
        if task.fallback_agent and agents[task.fallback_agent].output is not agents[task.agent].output:
            raise SpecError(
                file,
                task.task_id,
                "fallback_agent",
                f"{task.fallback_agent!r} outputs {agents[task.fallback_agent].output.__name__}, "
                f"but {task.agent!r} outputs {agents[task.agent].output.__name__}; "
                "downstream refs need the same schema",
            )
        for i, dep in enumerate(task.depends_on):
            if dep not in seen:
                raise SpecError(
                    file, task.task_id, f"depends_on[{i}]", f"unknown task {dep!r}; tasks: {sorted(seen)}"
                )
            if dep == task.task_id:
                raise SpecError(file, task.task_id, "depends_on", f"dependency cycle: {dep} -> {dep}")
        if len(set(task.depends_on)) != len(task.depends_on):
            raise SpecError(file, task.task_id, "depends_on", "lists a task twice")
        for key, value in task.inputs.items():
            _check_ref(spec, task, f"inputs.{key}", value, file, agents)
        if task.retrieval is not None:
            role = agents[task.agent]
            if RETRIEVAL not in role.tools:
                raise SpecError(
                    file, task.task_id, "retrieval", f"agent {task.agent!r} may not use retrieval"
                )
            if task.retrieval.collection is None:
                if role.retrieval_collection is None:
                    raise SpecError(
                        file, task.task_id, "retrieval.collection",
                        f"no collection: give one here or in agent {task.agent!r}'s `retrieval` settings",
                    )  # fmt: skip
                task.retrieval.collection = role.retrieval_collection
            if "k" not in task.retrieval.model_fields_set and role.retrieval_k is not None:
                task.retrieval.k = role.retrieval_k
            _check_ref(spec, task, "retrieval.collection", task.retrieval.collection, file, agents)
            _check_ref(spec, task, "retrieval.query", task.retrieval.query, file, agents)
        if task.fan_out is not None:
            source, field = task.fan_out.source_task, task.fan_out.source_field
            if not source or not field:
                raise SpecError(file, task.task_id, "fan_out.over", "must be $tasks.<task_id>.<list field>")
            _check_ref(spec, task, "fan_out.over", task.fan_out.over, file, agents)
            if source in fanned:
                raise SpecError(
                    file, task.task_id, "fan_out.over", f"{source!r} is itself fanned out; nest no deeper"
                )
            if not _is_list_field(agents[spec.task(source).agent].output, field):
                raise SpecError(
                    file, task.task_id, "fan_out.over", f"{task.fan_out.over!r} is not a list field"
                )
    for i, name in enumerate(spec.outputs):
        if name not in seen:
            raise SpecError(file, None, f"outputs[{i}]", f"unknown task {name!r}; tasks: {sorted(seen)}")
    _check_cycles(spec, file)
    return spec


def load_spec_file(path: str | Path, agents: Mapping[str, AgentRole] | None = None) -> WorkflowSpec:
    """Parse and validate one YAML spec; raises SpecError naming the file, task and field."""
    path = Path(path)
    file = str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(file, None, None, f"not valid YAML: {exc}") from exc
    except OSError as exc:
        raise SpecError(file, None, None, f"cannot read: {exc}") from exc
    return validate_spec(_parse(raw, file), file, agents)


def load_specs(
    directory: str | Path | None = None, agents: Mapping[str, AgentRole] | None = None
) -> dict[str, WorkflowSpec]:
    """All specs in `directory` keyed by workflow name (default: the current project's workflows)."""
    if directory is None:
        from agentflow_dagster.project import current_project

        return dict(current_project().workflows)
    specs: dict[str, WorkflowSpec] = {}
    for path in sorted(Path(directory).glob("*.y*ml")):
        spec = load_spec_file(path, agents)
        if spec.name in specs:
            raise SpecError(
                str(path),
                None,
                "name",
                f"workflow {spec.name!r} is also defined in {specs[spec.name].source_file}",
            )
        specs[spec.name] = spec
    return specs


def register_specs(
    bind: sa.Engine | sa.Connection, specs: Iterable[WorkflowSpec]
) -> list[tuple[str, str, str]]:
    """Upsert (name, version, hash) rows; a changed spec under an already recorded version is an error.

    On a connection the rows join the caller's transaction (a refusal then rolls back its writes too)."""
    import sqlalchemy as sa  # not at import: loading a project (status, submit) needs no database

    from agentflow_dagster.db import transaction

    recorded = sa.text("SELECT spec_hash FROM workflow_definitions WHERE name = :n AND version = :v")
    results: list[tuple[str, str, str]] = []
    with transaction(bind) as conn:
        for spec in specs:
            # Recorded already (every run after the first): one read, and no spec serialised.
            existing = conn.execute(recorded, {"n": spec.name, "v": spec.version}).scalar_one_or_none()
            if existing is not None:
                _check_recorded_hash(spec, existing)
                results.append((spec.name, spec.version, "unchanged"))
                continue
            params = {
                "n": spec.name,
                "v": spec.version,
                "h": spec.spec_hash,
                "d": spec.description,
                "s": json.dumps(spec.canonical()),
                "f": Path(spec.source_file).name,
            }
            inserted = conn.execute(
                sa.text(
                    "INSERT INTO workflow_definitions (name, version, spec_hash, description, spec, "
                    "source_file) VALUES (:n, :v, :h, :d, CAST(:s AS jsonb), :f) "
                    "ON CONFLICT (name, version) DO NOTHING RETURNING name"
                ),
                params,
            ).first()
            if inserted:
                results.append((spec.name, spec.version, "registered"))
                continue
            existing = conn.execute(recorded, params).scalar_one()  # another process recorded it meanwhile
            _check_recorded_hash(spec, existing)
            results.append((spec.name, spec.version, "unchanged"))
    return results


def _check_recorded_hash(spec: WorkflowSpec, recorded: str) -> None:
    if recorded != spec.spec_hash:
        raise SpecError(
            spec.source_file,
            None,
            "version",
            f"{spec.name} {spec.version} is already recorded with another hash ({recorded[:12]}); "
            "a changed spec needs a new version",
        )
