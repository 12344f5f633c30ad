"""Compile workflow specs into Dagster jobs: `request` -> task ops (from depends_on) -> `workflow_result`."""
# No `from __future__ import annotations` here: Dagster reads the op's config annotation at runtime.

import json
from collections.abc import Iterable, Sequence
from typing import Any

import dagster as dg

from agentflow_dagster.events import WorkflowRequest
from agentflow_dagster.names import BUCKET_ARTIFACTS
from agentflow_dagster.observability import llm_records, tracing
from agentflow_dagster.workflows.loader import register_specs
from agentflow_dagster.workflows.spec import InputError, SpecError, WorkflowSpec
from ops import history
from ops.factory import ACTOR, carried_request, make_task_op, request_carrier

RESULT_OP = "workflow_result"
# Workflow outputs above this size are stored in the artifacts bucket; the row keeps the reference.
INLINE_RESULT_LIMIT = 256 * 1024


class WorkflowRequestConfig(dg.Config):
    """Run config of the `request` op: the workflow request, inputs inline or by object-store reference."""

    plan_id: str
    event_id: str
    workflow: str
    version: str
    tenant: str = "default"
    inputs: dict[str, Any] = {}
    inputs_ref: str | None = None
    traceparent: str | None = None
    priority: int = 0
    submitted_at: str | None = None


def request_run_config(
    req: WorkflowRequest, version: str, *, traceparent: str | None = None
) -> dict[str, Any]:
    """Run config for a workflow job; inputs stay inline only when the request has no inputs_ref."""
    config = {
        "plan_id": req.plan_id,
        "event_id": req.event_id,
        "workflow": req.workflow,
        "version": version,
        "tenant": req.tenant,
        "inputs": {} if req.inputs_ref else dict(req.inputs),
        "inputs_ref": req.inputs_ref,
        "traceparent": traceparent,
        "priority": req.priority,
        "submitted_at": req.submitted_at.isoformat(),
    }
    return {"ops": {"request": {"config": config}}}


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id of a W3C traceparent (`00-<trace id>-<span id>-<flags>`)."""
    parts = (traceparent or "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def op_def_name(spec: WorkflowSpec, node: str) -> str:
    """Op definition names are unique per code location; nodes in the job keep the plain task_id."""
    return f"{spec.name}__{node}"


def split_ref(ref: str) -> tuple[str, str]:
    """(bucket, key) of `s3://bucket/key`, or of a plain key in the artifacts bucket."""
    if ref.startswith("s3://"):
        bucket, _, key = ref[len("s3://") :].partition("/")
        return bucket, key
    return BUCKET_ARTIFACTS, ref


def make_request_op(spec: WorkflowSpec) -> dg.OpDefinition:
    """Root op: check the request against the spec, load inputs by reference, open the workflow run."""

    @dg.op(
        name=op_def_name(spec, "request"),
        out=dg.Out(dict),
        required_resource_keys={"postgres", "object_store"},
        description=f"workflow request for {spec.name} {spec.version}",
    )
    def request(context: dg.OpExecutionContext, config: WorkflowRequestConfig) -> dict[str, Any]:
        pg = context.resources.postgres
        if (config.workflow, config.version) != (spec.name, spec.version):
            raise dg.Failure(
                f"run config is for {config.workflow} {config.version} "
                f"but this job runs {spec.name} {spec.version}",
                allow_retries=False,
            )
        raw = dict(config.inputs)
        if config.inputs_ref:
            bucket, key = split_ref(config.inputs_ref)
            raw = json.loads(context.resources.object_store.store.get(bucket, key))
        request = {
            "plan_id": config.plan_id,
            "event_id": config.event_id,
            "workflow": spec.name,
            "version": spec.version,
            "tenant": config.tenant,
            "trace_id": trace_id_of(config.traceparent),
            "traceparent": config.traceparent,
            "submitted_at": config.submitted_at,
            # The row records a reference, not a copy, when the inputs came by reference.
            "inputs_record": {"inputs_ref": config.inputs_ref} if config.inputs_ref else raw,
        }
        tracing.setup_tracing("agentflow-run-worker")
        # Task spans are children of this span: its context replaces the sensor's in the request they get.
        with tracing.workflow_span(
            spec.name, config.plan_id, parent=config.traceparent, gen_ai__workflow__version=spec.version
        ):
            request["traceparent"] = tracing.inject_traceparent() or config.traceparent
        rejected: InputError | None = None
        try:
            request["inputs"] = spec.validate_inputs(raw)
        except InputError as exc:
            rejected = exc
        audit = history.AuditRow(
            ACTOR, "workflow.rejected" if rejected else "workflow.running", config.plan_id, spec.name,
            {"error": str(rejected), "run_id": context.run_id} if rejected else {
                "version": spec.version, "run_id": context.run_id, "event_id": config.event_id,
                "tenant": config.tenant,
            },
        )  # fmt: skip
        # The spec's definition row, the plan's row and its audit entry: one commit (a spec recorded
        # under this version with another hash rolls it all back).
        try:
            with pg.engine.begin() as conn:
                register_specs(conn, [spec])
                history.upsert_workflow_running(conn, request, context.run_id, audit=audit)
                if rejected is not None:
                    history.finish_workflow(conn, config.plan_id, "failed", error=str(rejected))
        except SpecError as exc:
            raise dg.Failure(str(exc), allow_retries=False) from exc
        if rejected is not None:
            raise dg.Failure(str(rejected), allow_retries=False) from rejected
        context.add_output_metadata(
            {"plan_id": config.plan_id, "workflow": spec.name, "version": spec.version}
        )
        return request

    return request


def make_result_op(spec: WorkflowSpec) -> dg.OpDefinition:
    """Terminal op: the result tasks' outputs become the workflow's output; the run is marked succeeded."""
    sinks = spec.result_tasks()
    fanned = spec.fanned_tasks()
    carrier = request_carrier(spec, sinks)
    ins: dict[str, dg.In] = {} if carrier else {"request": dg.In(dict)}
    ins.update({s: dg.In(list if s in fanned else dict) for s in sinks})

    def compute(context: dg.OpExecutionContext, inputs: dict[str, Any]) -> Any:
        request = carried_request(inputs, carrier)
        pg = context.resources.postgres
        results = {s: inputs[s] for s in sinks}

        def outputs_of(value: Any) -> Any:
            return [r["output"] for r in value] if isinstance(value, list) else value["output"]

        flat = [r for s in sinks for r in (results[s] if isinstance(results[s], list) else [results[s]])]
        output: dict[str, Any] = {
            "workflow": spec.name,
            "version": spec.version,
            "providers": sorted({r["provider"] for r in flat}),
            "offline": any(r["offline"] for r in flat),
            "tasks": {s: outputs_of(results[s]) for s in sinks},
        }
        blob = json.dumps(output, default=str)
        stored: dict[str, Any] = output
        if len(blob) > INLINE_RESULT_LIMIT:
            key = f"results/{request['plan_id']}.json"
            store = context.resources.object_store.store
            store.ensure_bucket(BUCKET_ARTIFACTS)
            store.put(BUCKET_ARTIFACTS, key, blob.encode(), "application/json")
            stored = {"output_ref": f"s3://{BUCKET_ARTIFACTS}/{key}", "providers": output["providers"]}
        # The plan's row, its audit entry and the totals for the metadata: one transaction.
        with pg.engine.begin() as conn:
            history.finish_workflow(
                conn, request["plan_id"], "succeeded", output=stored, audit=history.AuditRow(
                    ACTOR, "workflow.succeeded", request["plan_id"], spec.name, {"run_id": context.run_id}
                ),
            )  # fmt: skip
            totals = llm_records.workflow_llm_totals(conn, request["plan_id"])
        yield dg.Output(
            output,
            metadata={"providers": ", ".join(output["providers"]), "offline": output["offline"], **totals},
        )

    return dg.OpDefinition(
        compute_fn=compute,
        name=op_def_name(spec, RESULT_OP),
        ins=ins,
        outs={"result": dg.Out(dict)},
        description=f"result of {spec.name}: outputs of {', '.join(sinks)}",
        required_resource_keys={"postgres", "object_store"},
    )


def build_workflow_job(spec: WorkflowSpec, retriever_keys: Sequence[str] = ()) -> dg.JobDefinition:
    """One job for one spec: ops wired by depends_on, fan-out through DynamicOut.map/collect."""
    request_op = make_request_op(spec)
    task_ops = {t.task_id: make_task_op(spec, t, retriever_keys) for t in spec.tasks}
    result_op = make_result_op(spec)

    def compose() -> None:
        req = request_op.alias("request")()
        results: dict[str, Any] = {}
        handles: dict[str, Any] = {}  # the full output handle of each op (named outputs for fan sources)
        for task_id in spec.topological_order():
            task = spec.task(task_id)
            op_def = task_ops[task_id]
            kwargs = {dep: results[dep] for dep in task.depends_on}
            if "request" in op_def.input_dict:
                kwargs["request"] = req
            if task.fan_out is not None:
                dynamic = getattr(handles[task.fan_out.source_task], f"fan_{task_id}")
                node = op_def.alias(task_id)
                mapped = dynamic.map(lambda item, node=node, kwargs=kwargs: node(item=item, **kwargs))
                results[task_id] = mapped.collect()
                continue
            handle = op_def.alias(task_id)(**kwargs)
            handles[task_id] = handle
            results[task_id] = handle.result if len(op_def.output_defs) > 1 else handle
        sinks = {s: results[s] for s in spec.result_tasks()}
        if "request" in result_op.input_dict:
            sinks["request"] = req
        result_op.alias(RESULT_OP)(**sinks)

    return dg.job(
        name=spec.name,
        description=f"{spec.description} (spec version {spec.version})",
        tags={"agentflow/workflow": spec.name, "agentflow/workflow_version": spec.version},
        # A chain gains nothing from a process per step, and each such process imports the code location.
        executor_def=dg.in_process_executor if spec.runs_in_process() else dg.multiprocess_executor,
    )(compose)


def build_workflow_jobs(
    specs: Iterable[WorkflowSpec], retriever_keys: Sequence[str] = ()
) -> list[dg.JobDefinition]:
    """A job per spec, named by the workflow; `retriever_keys` see `ops.factory.retriever_from`."""
    return [build_workflow_job(spec, retriever_keys) for spec in specs]
