"""Workflow spec models: a versioned, declarative graph of agent tasks."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
)

from agentflow_dagster.errors import ProjectError

TASK_ID_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
# Op and input names the compiler itself uses; a task may not take them.
RESERVED_TASK_IDS = frozenset({"request", "workflow_result", "item", "result"})
REF_RE = re.compile(
    r"^\$(?P<scope>request|tasks|item)(?:\.(?P<name>[a-z][a-z0-9_]*))?(?:\.(?P<field>[a-z][a-z0-9_]*))?$"
)

InputType = Literal["string", "integer", "number", "boolean", "object", "array"]
_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


class SpecError(ProjectError):
    """A spec is invalid; names the file, the task and the field, and says how to fix it."""

    def __init__(self, file: str, task: str | None, field: str | None, message: str):
        self.task = task
        super().__init__(file, f"task {task!r}" if task else None, field, message)


class InputError(ValueError):
    """A workflow request's inputs do not match the spec's declared inputs."""


class InputField(BaseModel):
    """One declared workflow input."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    type: InputType = "string"
    required: bool = True
    max_length: int | None = Field(default=None, ge=1, description="characters (string) or items (array)")
    description: str = ""
    default: Any = None


class RetrySpec(BaseModel):
    """Dagster retry policy of a task: attempts after the first, delay, backoff and jitter."""

    model_config = ConfigDict(extra="forbid")

    max_retries: int = Field(default=2, ge=0, le=10)
    delay_s: float = Field(default=2.0, ge=0.0, le=3600.0)
    backoff: Literal["exponential", "linear", "none"] = "exponential"
    jitter: Literal["plus_minus", "full", "none"] = "plus_minus"


class FanOutSpec(BaseModel):
    """Map a list field of an upstream output to parallel copies of this task; `$item` is one element."""

    model_config = ConfigDict(extra="forbid")

    over: str = Field(description="$tasks.<task_id>.<list field>")
    max_items: int = Field(default=8, ge=1, le=64)

    @property
    def source_task(self) -> str:
        match = REF_RE.match(self.over)
        return match["name"] if match and match["name"] else ""

    @property
    def source_field(self) -> str:
        match = REF_RE.match(self.over)
        return match["field"] if match and match["field"] else ""


class RetrievalSpec(BaseModel):
    """Retrieval a task runs before its LLM call; values may be literals or refs."""

    model_config = ConfigDict(extra="forbid")

    # None: the agent's `retrieval.collection` (filled in by the loader, so the recorded spec has it).
    collection: str | None = None
    query: str
    k: int = Field(default=4, ge=1, le=50)


class ApprovalSpec(BaseModel):
    """How long a `requires_approval` task waits for a human decision, and what happens after that."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(default=86400.0, gt=0.0, le=30 * 86400.0)
    # reject: the workflow ends `rejected`; escalate: one more timeout_s for `escalate_to`, then reject.
    on_timeout: Literal["reject", "escalate"] = "reject"
    escalate_to: str = Field(default="", max_length=200, description="who is asked after the timeout")


class TaskSpec(BaseModel):
    """One agent task: an op in the compiled job."""

    model_config = ConfigDict(extra="forbid")

    task_id: str = Field(pattern=TASK_ID_PATTERN)
    agent: str
    description: str = ""
    depends_on: list[str] = Field(default_factory=list)
    inputs: dict[str, Any] = Field(default_factory=dict)
    retry: RetrySpec = Field(default_factory=RetrySpec)
    timeout_s: float = Field(default=120.0, gt=0.0, le=3600.0)
    fallback_agent: str | None = None
    fan_out: FanOutSpec | None = None
    retrieval: RetrievalSpec | None = None
    requires_approval: bool = False
    approval: ApprovalSpec | None = None

    @field_validator("requires_approval")
    @classmethod
    def _gate_not_fanned(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("fan_out") is not None:
            raise ValueError("a fanned-out task cannot require approval; gate the task it fans out from")
        return value

    @field_validator("approval")
    @classmethod
    def _approval_needs_gate(cls, value: ApprovalSpec | None, info: ValidationInfo) -> ApprovalSpec | None:
        if value is not None and not info.data.get("requires_approval"):
            raise ValueError("approval settings only apply to a task with requires_approval: true")
        return value

    @model_serializer(mode="wrap")
    def _omit_unset_approval(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Specs written before approval settings existed keep their hash (and their tasks' input digests).
        data: dict[str, Any] = handler(self)
        if data.get("approval", ...) is None:
            del data["approval"]
        return data

    @property
    def approval_policy(self) -> ApprovalSpec:
        """The task's approval settings (defaults when the spec gives none)."""
        return self.approval or ApprovalSpec()


class WorkflowSpec(BaseModel):
    """A versioned workflow: declared inputs and a DAG of agent tasks."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    version: str = Field(pattern=r"^[0-9]+(\.[0-9]+){0,2}([.-][A-Za-z0-9]+)?$")
    description: str = ""
    inputs: list[InputField] = Field(default_factory=list)
    tasks: list[TaskSpec] = Field(min_length=1)
    outputs: list[str] = Field(
        default_factory=list, description="tasks whose outputs form the result (default: sinks)"
    )
    source_file: str = Field(default="", exclude=True)
    # How the run worker executes the ops: not part of what the workflow means, so not hashed either.
    executor: Literal["auto", "in_process", "multiprocess"] = Field(default="auto", exclude=True)

    def task(self, task_id: str) -> TaskSpec:
        """The task with this id."""
        for task in self.tasks:
            if task.task_id == task_id:
                return task
        raise KeyError(f"workflow {self.name!r} has no task {task_id!r}")

    @property
    def task_ids(self) -> list[str]:
        return [t.task_id for t in self.tasks]

    def topological_order(self) -> list[str]:
        """Task ids with every task after its dependencies (spec order breaks ties)."""
        done: list[str] = []
        pending = list(self.tasks)
        while pending:
            ready = [t for t in pending if all(d in done for d in t.depends_on)]
            if not ready:
                raise ValueError(f"workflow {self.name!r} has a dependency cycle")
            done.extend(t.task_id for t in ready)
            pending = [t for t in pending if t not in ready]
        return done

    def sinks(self) -> list[str]:
        """Tasks nothing depends on: their outputs are the workflow's result."""
        upstream = {d for t in self.tasks for d in t.depends_on}
        return [t.task_id for t in self.tasks if t.task_id not in upstream]

    def result_tasks(self) -> list[str]:
        """Tasks whose outputs make up the workflow's result."""
        return list(self.outputs) or self.sinks()

    def fanned_tasks(self) -> set[str]:
        return {t.task_id for t in self.tasks if t.fan_out is not None}

    def runs_in_process(self) -> bool:
        """`auto`: in-process when no two tasks could run at once (a chain without fan-out)."""
        if self.executor != "auto":
            return self.executor == "in_process"
        depth: dict[str, int] = {}
        for task_id in self.topological_order():
            depth[task_id] = 1 + max((depth[d] for d in self.task(task_id).depends_on), default=-1)
        return not self.fanned_tasks() and len(set(depth.values())) == len(depth)

    def canonical(self) -> dict[str, Any]:
        """The spec as plain data (what is hashed and recorded)."""
        return self.model_dump(mode="json")

    @property
    def spec_hash(self) -> str:
        blob = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def validate_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Check request inputs against the declared ones; returns them with defaults filled in."""
        declared = {f.name: f for f in self.inputs}
        unknown = sorted(set(inputs) - set(declared))
        if unknown:
            raise InputError(
                f"workflow {self.name!r} got undeclared inputs {unknown}; "
                f"declared: {sorted(declared) or 'none'}"
            )
        out: dict[str, Any] = {}
        for name, field in declared.items():
            if name not in inputs or inputs[name] is None:
                if field.required and field.default is None:
                    raise InputError(
                        f"workflow {self.name!r}: required input {name!r} ({field.type}) is missing"
                    )
                if field.default is not None:
                    out[name] = field.default
                continue
            value = inputs[name]
            wrong_bool = isinstance(value, bool) and field.type in ("integer", "number")
            if wrong_bool or not isinstance(value, _PY_TYPES[field.type]):
                raise InputError(
                    f"workflow {self.name!r}: input {name!r} must be {field.type}, got {type(value).__name__}"
                )
            if (
                field.max_length is not None
                and isinstance(value, str | list)
                and len(value) > field.max_length
            ):
                unit = "characters" if isinstance(value, str) else "items"
                raise InputError(
                    f"workflow {self.name!r}: input {name!r} has {len(value)} {unit}, "
                    f"max_length is {field.max_length}"
                )
            out[name] = value
        return out
