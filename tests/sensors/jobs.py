"""A small workflow job standing in for compiled specs in the sensor tests."""

from typing import Any

import dagster as dg

from agentflow_dagster.events import WorkflowRequest


@dg.op(config_schema=dg.Permissive())
def answer(context: dg.OpExecutionContext) -> dict[str, Any]:
    if context.op_config.get("fail"):
        raise RuntimeError("the answer op was told to fail")
    return dict(context.op_config)


@dg.job(tags={"agentflow/workflow_version": "0.9"})
def echo_flow() -> None:
    answer()


class EchoSpec:
    """Declares one required string input `question` and an optional `detail`."""

    version = "1.2.0"

    def validate_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        unknown = set(inputs) - {"question", "detail"}
        if unknown:
            raise ValueError(f"undeclared inputs {sorted(unknown)}")
        if not isinstance(inputs.get("question"), str):
            raise ValueError("required input 'question' (string) is missing")
        return {"detail": "", **inputs}

    def sinks(self) -> list[str]:
        return ["answer"]


def echo_run_config(req: WorkflowRequest, version: str, traceparent: str) -> dict[str, Any]:
    """Stands in for ops.compiler.request_run_config."""
    config = {"plan_id": req.plan_id, "version": version, "inputs": req.inputs, "inputs_ref": req.inputs_ref}
    return {"ops": {"answer": {"config": config}}}
