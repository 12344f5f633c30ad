"""The compiler: one job per spec, one op per task, dependencies and retry policies from the spec."""

from __future__ import annotations

import dagster as dg

from agentflow_dagster.events import WorkflowRequest
from agentflow_dagster.workflows.loader import load_specs
from ops.compiler import build_workflow_jobs, request_run_config, trace_id_of
from ops.factory import resolve_ref


def test_one_job_per_spec_one_op_per_task() -> None:
    specs = load_specs()
    jobs = {job.name: job for job in build_workflow_jobs(specs.values())}
    assert set(jobs) == set(specs)
    for name, spec in specs.items():
        nodes = {node.name for node in jobs[name].nodes}
        assert nodes == {"request", "workflow_result", *spec.task_ids}
        for task in spec.tasks:
            op_def = jobs[name].graph.node_named(task.task_id).definition
            policy = op_def.retry_policy
            assert policy is not None and policy.max_retries == task.retry.max_retries
            assert policy.delay == task.retry.delay_s
            assert policy.backoff == dg.Backoff.EXPONENTIAL and policy.jitter == dg.Jitter.PLUS_MINUS
            # The request comes as an input of its own only when no dependency's result carries it.
            carried = any(d not in spec.fanned_tasks() for d in task.depends_on)
            assert set(op_def.input_dict) == {*task.depends_on} | ({"item"} if task.fan_out else set()) | (
                set() if carried else {"request"}
            )


def test_dependencies_follow_depends_on() -> None:
    spec = load_specs()["support_triage"]
    job = build_workflow_jobs([spec])[0]
    deps = {
        inv.alias: {k: getattr(d, "node", None) for k, d in v.items()}
        for inv, v in job.graph.dependencies.items()
    }
    # draft gets the request in classify's result (two Dagster events fewer per op), classify from `request`.
    assert deps["draft"] == {"classify": "classify", "retrieve": "retrieve"}
    assert deps["classify"] == {"request": "request"}


def test_fan_out_maps_over_a_dynamic_output() -> None:
    spec = load_specs()["research_report"]
    job = build_workflow_jobs([spec])[0]
    plan = job.graph.node_named("plan").definition
    assert plan.output_dict["fan_research"].is_dynamic
    assert "item" in job.graph.node_named("research").definition.input_dict
    collected = next(v for inv, v in job.graph.dependencies.items() if inv.alias == "synthesize")["research"]
    assert type(collected).__name__ == "DynamicCollectDependencyDefinition"


def test_request_run_config() -> None:
    req = WorkflowRequest(event_id="ev-1", workflow="support_triage", inputs={"message": "hi"}, tenant="acme")
    cfg = request_run_config(req, "1.0.0", traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01")["ops"][
        "request"
    ]
    config = cfg["config"]
    assert (
        config["plan_id"] == req.plan_id
        and config["inputs"] == {"message": "hi"}
        and config["tenant"] == "acme"
    )
    assert trace_id_of(config["traceparent"]) == "1" * 32
    by_ref = WorkflowRequest(
        event_id="ev-2", workflow="support_triage", inputs={"message": "x"}, inputs_ref="in/ev-2.json"
    )
    config = request_run_config(by_ref, "1.0.0")["ops"]["request"]["config"]
    assert config["inputs"] == {} and config["inputs_ref"] == "in/ev-2.json"


def test_resolve_ref() -> None:
    upstream = {
        "plan": {"output": {"outline": ["a"]}},
        "research": [{"output": {"q": 1}}, {"output": {"q": 2}}],
    }
    assert resolve_ref("$request.topic", {"topic": "t"}, upstream) == "t"
    assert resolve_ref("$tasks.plan.outline", {}, upstream) == ["a"]
    assert resolve_ref("$tasks.research.q", {}, upstream) == [1, 2]
    assert resolve_ref("$tasks.research", {}, upstream) == [{"q": 1}, {"q": 2}]
    assert resolve_ref("$item", {}, upstream, item="x") == "x"
    assert resolve_ref("literal", {}, upstream) == "literal"
