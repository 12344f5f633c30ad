"""Benchmark 2: per-task overhead of the platform against the same agent op with none of it.

    python bench/task_overhead_bench.py [--iterations 40] [--latency 0] [--label NAME]

Both jobs run in-process (ephemeral Dagster instance with dagster.yaml's `python_logs`, so Dagster's
own storage and logging cost the same for both) against the loopback LLM server. The platform job is
the compiled bench_three_step spec (compiler, idempotency store + Redis lock, history and audit rows,
tracing, LLM call records); the bare job is three ops that call the same agent runner and provider
and nothing else. Overhead per task = mean task step duration (STEP_START -> STEP_SUCCESS) of the
platform minus the bare one, and the same plus each task's share of the `request` and
`workflow_result` ops; the components are timed by wrapping them. Writes
bench/results/task_overhead_bench[_LABEL].{json,md,png}.
"""

# No `from __future__ import annotations`: Dagster reads the bare ops' annotations at runtime.
import argparse
import functools
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import dagster as dg
from common import BENCH, BenchStack, machine, md_table, plot_path, pyplot, summary, write_results

from tests.support.llm_server import LLMTestServer, ok, slow

TASKS = ("classify", "summarize", "review")
TIMINGS: dict[str, list[float]] = defaultdict(list)


def timed(owner: Any, attr: str, label: str) -> None:
    """Replace owner.attr with a wrapper that records each call's wall time under `label`."""
    original = getattr(owner, attr)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            TIMINGS[label].append(time.perf_counter() - start)

    setattr(owner, attr, wrapper)


def instrument() -> None:
    """Time the platform's per-task components where the op factory calls them."""
    import ops.factory as factory
    from agentflow_dagster.observability import llm_records, tracing
    from ops import history
    from ops.idempotency import TaskLock, TaskOutputStore
    from resources.postgres import PostgresResource

    timed(history, "start_task_run", "history: start_task_run")
    timed(history, "finish_task_run", "history: finish_task_run")
    timed(PostgresResource, "audit", "audit rows")
    timed(TaskOutputStore, "get", "idempotency: task_outputs get")
    timed(TaskOutputStore, "put", "idempotency: task_outputs put")
    timed(TaskLock, "acquire", "idempotency: Redis lock acquire")
    timed(TaskLock, "release", "idempotency: Redis lock release")
    timed(llm_records.ObservedCallRecorder, "__call__", "records: llm_calls row + evaluation")
    timed(llm_records, "task_llm_totals", "records: task_llm_totals query")
    timed(tracing, "flush", "tracing: flush")
    timed(factory, "run_agent", "agent runner (LLM call included)")


def bare_job(latency_note: str) -> Any:
    """Three ops calling the agent runner directly: no store, lock, history, tracing or records."""
    from agentflow_dagster.agents.roles import get_agent
    from agentflow_dagster.agents.runner import run_agent

    def make(task_id: str, agent: str, inputs_of: Any) -> dg.OpDefinition:
        @dg.op(name=task_id, required_resource_keys={"llm"})
        def task(context: dg.OpExecutionContext, upstream: dict | None = None) -> dict:
            role = get_agent(agent)
            llm = context.resources.llm
            run = run_agent(
                role, inputs_of(upstream), provider=llm.provider, model=llm.model_for(role.profile)
            )
            return {"output": run.output}

        return task

    message = "My invoice was charged twice; please refund one."
    classify = make("classify", "classifier", lambda _: {"message": message, "customer_tier": "standard"})
    summarize = make(
        "summarize", "summarizer", lambda up: {"document": message, "category": up["output"]["category"]}
    )
    review = make("review", "reviewer", lambda up: {"report": up})

    @dg.job(name="bare_three_step", executor_def=dg.in_process_executor, description=latency_note)
    def job() -> None:
        review(summarize(classify()))

    return job


def step_durations(instance: Any, result: Any) -> dict[str, float]:
    """step key -> seconds from STEP_START to STEP_SUCCESS (event log timestamps)."""
    kinds = {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS}
    starts: dict[str, float] = {}
    out: dict[str, float] = {}
    for entry in instance.all_logs(result.run_id, of_type=kinds):
        if entry.dagster_event.event_type == dg.DagsterEventType.STEP_START:
            starts[entry.step_key] = entry.timestamp
        else:
            out[entry.step_key] = entry.timestamp - starts[entry.step_key]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--label", default="", help="suffix of the result files (task_overhead_bench_LABEL)")
    parser.add_argument(
        "--latency", type=float, default=0.0, help="LLM latency in seconds (0: overhead only)"
    )
    args = parser.parse_args()

    from agentflow_dagster.events import plan_id_for
    from agentflow_dagster.resources_env import build_resources
    from agentflow_dagster.settings import get_settings
    from agentflow_dagster.workflows.loader import load_specs
    from ops.compiler import build_workflow_job, request_run_config

    tmp = Path(tempfile.mkdtemp(prefix="agentflow-bench-overhead-"))
    llm = LLMTestServer().start()
    llm.rule(lambda body: True, slow(args.latency) if args.latency else ok())
    stack = BenchStack(tmp / "af")
    data: dict[str, Any] = {"machine": machine(), "iterations": args.iterations, "latency_s": args.latency}
    try:
        stack.start({"OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "bench-key"})
        spec = load_specs(BENCH / "specs")["bench_three_step"]
        platform_job = build_workflow_job(spec)
        resources = build_resources(get_settings())
        bare = bare_job(f"LLM latency {args.latency}s")
        # Both jobs on the platform's instance logging settings (dagster.yaml `python_logs`).
        instance = dg.DagsterInstance.ephemeral(settings={"python_logs": _repo_instance()["python_logs"]})

        def platform_once() -> dict[str, float]:
            from agentflow_dagster.events import WorkflowRequest

            event_id = f"overhead-{uuid.uuid4().hex}"
            req = WorkflowRequest(event_id=event_id, workflow=spec.name, inputs={"message": "refund please"})
            assert req.plan_id == plan_id_for(event_id)
            config = request_run_config(req, spec.version)
            result = platform_job.execute_in_process(
                run_config=config, resources=resources, instance=instance
            )
            assert result.success
            return step_durations(instance, result)

        def bare_once() -> dict[str, float]:
            result = bare.execute_in_process(resources={"llm": resources["llm"]}, instance=instance)
            assert result.success
            return step_durations(instance, result)

        for _ in range(3):  # warm-up: imports, connection pools, tracer provider, spec registration
            platform_once()
            bare_once()
        instrument()
        TIMINGS.clear()
        plat: dict[str, list[float]] = defaultdict(list)
        bar: dict[str, list[float]] = defaultdict(list)
        wall = {"platform": 0.0, "bare": 0.0}
        for _ in range(args.iterations):  # interleaved, so machine noise hits both alike
            t = time.perf_counter()
            for k, v in platform_once().items():
                plat[k].append(v)
            wall["platform"] += time.perf_counter() - t
            t = time.perf_counter()
            for k, v in bare_once().items():
                bar[k].append(v)
            wall["bare"] += time.perf_counter() - t
        llm_calls = llm.count()
    finally:
        stack.stop()
        llm.stop()

    p_task = [v for k in TASKS for v in plat[k]]
    b_task = [v for k in TASKS for v in bar[k]]
    overhead_ms = 1000 * (sum(p_task) / len(p_task) - sum(b_task) / len(b_task))
    # The request and result ops are platform work the bare job does not do: each task's share counts.
    share_ms = 1000 * (_mean(plat["request"]) + _mean(plat["workflow_result"])) / len(TASKS)
    per_task_components = {
        label: round(1000 * sum(vals) / (len(TASKS) * args.iterations), 2) for label, vals in TIMINGS.items()
    }
    data.update(
        {
            "platform_task_step_s": summary(p_task),
            "bare_task_step_s": summary(b_task),
            "overhead_per_task_ms": round(overhead_ms, 2),
            "request_result_share_per_task_ms": round(share_ms, 2),
            "overhead_per_task_with_share_ms": round(overhead_ms + share_ms, 2),
            "platform_request_step_s": summary(plat["request"]),
            "platform_result_step_s": summary(plat["workflow_result"]),
            "wall_per_workflow_s": {k: round(v / args.iterations, 4) for k, v in wall.items()},
            "component_ms_per_task": per_task_components,
            "llm_calls": llm_calls,
        }
    )
    rows = [
        ["platform task op", *_ms(data["platform_task_step_s"])],
        ["bare agent op", *_ms(data["bare_task_step_s"])],
        ["platform `request` op (per workflow)", *_ms(data["platform_request_step_s"])],
        ["platform `workflow_result` op (per workflow)", *_ms(data["platform_result_step_s"])],
    ]
    comp = sorted(per_task_components.items(), key=lambda kv: -kv[1])
    md = "\n".join(
        [
            "# Benchmark 2: per-task platform overhead",
            "",
            f"{data['machine']['host']} · {data['machine']['at']} · {data['machine']['note']}",
            "",
            f"{args.iterations} in-process runs of each job (interleaved), LLM latency {args.latency} s, "
            "ephemeral Dagster instance, Postgres + Redis on loopback.",
            "",
            md_table(["step", "p50 ms", "p99 ms", "mean ms", "n"], rows),
            "",
            f"**Overhead per task: {data['overhead_per_task_ms']} ms** (mean platform task step - mean bare "
            "step). Wall per workflow: "
            f"platform {data['wall_per_workflow_s']['platform']} s, "
            f"bare {data['wall_per_workflow_s']['bare']} s.",
            "",
            f"**Counted with each task's share of the `request` and `workflow_result` ops: "
            f"{data['overhead_per_task_with_share_ms']} ms per task** ({data['overhead_per_task_ms']} + "
            f"{data['request_result_share_per_task_ms']}; the bare job has neither op).",
            "",
            "## Where the platform's time goes (ms per task, wrapped calls; the agent runner row is the "
            "work both jobs do plus the token-budget query and the llm_calls row; calls that share a "
            "transaction exclude its commit)",
            "",
            md_table(["component", "ms per task"], comp),
        ]
    )
    name = f"task_overhead_bench_{args.label}" if args.label else "task_overhead_bench"
    write_results(name, data, md)
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax1.boxplot([[1000 * v for v in p_task], [1000 * v for v in b_task]], tick_labels=["platform", "bare"])
    ax1.set_ylabel("task step duration, ms")
    ax1.set_title("Task op duration (same agent work)")
    labels = [k for k, _ in comp if not k.startswith("agent runner")]
    ax2.barh(labels, [per_task_components[k] for k in labels])
    ax2.set_xlabel("ms per task")
    ax2.set_title("Platform components")
    ax2.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(plot_path(name), dpi=110)
    plt.close(fig)
    print(md)


def _repo_instance() -> dict[str, Any]:
    import yaml

    loaded: dict[str, Any] = yaml.safe_load((BENCH.parent / "dagster.yaml").read_text())
    return loaded


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _ms(stats: dict[str, Any]) -> list[Any]:
    return [None if stats[k] is None else round(1000 * stats[k], 1) for k in ("p50", "p99", "mean")] + [
        stats["n"]
    ]


if __name__ == "__main__":
    main()
