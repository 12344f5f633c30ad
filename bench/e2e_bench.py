"""Benchmark 1: Kafka events -> finished workflow runs, the platform against a bare-Dagster baseline.

    python bench/e2e_bench.py --events 30 [--sustained-rate 240 --sustained-seconds 120] [--label NAME]

One throwaway stack (embedded Postgres, Redis, Tansu) and a loopback LLM server answering every call
after a fixed latency. The platform runs on the repo's dagster.yaml with its daemon entry point; the
baseline on the same settings with stock Dagster classes (Postgres storage, queued coordinator,
default launcher) and stock `dagster-daemon`. Each side gets its own daemon (and code server):
a warm-up event, single events on an idle system, a burst, then a sustained window (events at a
fixed rate above what either side finishes; throughput = workflows finished inside the window).
The baseline is the strongest bare-Dagster setup: in-process executor for the chain, the same run
slots and the same 1 s sensor interval (`--multiprocess-column` adds Dagster's default executor as an
extra column, without a ratio). Timestamps come from the Dagster
instance (RUN_ENQUEUED, first STEP_START of a task, RUN_SUCCESS) against each event's submitted_at.
Also checks the guarantees: one run per event, every run succeeded, three LLM calls per workflow.
Writes bench/results/e2e_bench[_LABEL].{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import BENCH, BenchStack, machine, md_table, plot_path, pyplot, summary, wait_until, write_results
from cpuacct import CpuGroup

from agentflow_dagster import names
from tests.support.llm_server import LLMTestServer, slow

BASELINE_TOPIC = "bench.baseline.requests"
WORKFLOW = "bench_three_step"
TASKS = ("classify", "summarize", "review")


class Side:
    """One system under test: how to publish its events and find its runs."""

    def __init__(self, name: str, topic: str, event_tag: str, workspace: Path):
        self.name, self.topic, self.event_tag, self.workspace = name, topic, event_tag, workspace

    def event(self, event_id: str, tenant: str) -> dict[str, Any]:
        return {
            "event_id": event_id,
            "workflow": WORKFLOW,
            "inputs": {"message": f"My invoice {event_id} was charged twice; please refund one."},
            "tenant": tenant,
            "submitted_at": datetime.now(UTC).isoformat(),
        }


def publish(producer: Any, side: Side, events: list[dict[str, Any]]) -> dict[str, float]:
    """Send the events as fast as the producer goes; returns event_id -> submitted_at (epoch s)."""
    sent: dict[str, float] = {}
    futures = []
    for event in events:
        event["submitted_at"] = datetime.now(UTC).isoformat()
        sent[event["event_id"]] = datetime.fromisoformat(event["submitted_at"]).timestamp()
        futures.append(
            producer.send(side.topic, key=event["event_id"].encode(), value=json.dumps(event).encode())
        )
    producer.flush(timeout=30)
    for future in futures:
        future.get(timeout=30)
    return sent


def run_timings(instance: Any, side: Side, sent: dict[str, float], timeout: float) -> list[dict[str, Any]]:
    """Wait until every event's run finished; then its timings from the event log."""
    import dagster as dg
    from dagster import DagsterEventType

    def runs() -> list[Any]:
        return [
            r
            for eid in sent
            for r in instance.get_run_records(filters=dg.RunsFilter(tags={side.event_tag: eid}))
        ]

    def all_done() -> bool:
        found = runs()
        return len({r.dagster_run.tags[side.event_tag] for r in found}) == len(sent) and all(
            r.dagster_run.is_finished for r in found
        )

    wait_until(all_done, timeout, interval=1.0)
    out: list[dict[str, Any]] = []
    kinds = {
        DagsterEventType.RUN_ENQUEUED,
        DagsterEventType.RUN_START,
        DagsterEventType.STEP_START,
        DagsterEventType.RUN_SUCCESS,
        DagsterEventType.RUN_FAILURE,
    }
    for record in runs():
        run = record.dagster_run
        t0 = sent[run.tags[side.event_tag]]
        logs = instance.all_logs(run.run_id, of_type=kinds)
        first: dict[str, float] = {}
        task_starts = []
        for entry in logs:
            # Enum names, not values: the values of the run events are still PIPELINE_*.
            kind = entry.dagster_event.event_type.name
            first.setdefault(kind, entry.timestamp)
            if kind == "STEP_START" and entry.step_key in TASKS:
                task_starts.append(entry.timestamp)
        end = first.get("RUN_SUCCESS") or first.get("RUN_FAILURE")
        out.append(
            {
                "event_id": run.tags[side.event_tag],
                "run_id": run.run_id,
                "status": run.status.value,
                "submitted_at": t0,
                "queued_s": first["RUN_ENQUEUED"] - t0 if "RUN_ENQUEUED" in first else None,
                "run_start_s": first["RUN_START"] - t0 if "RUN_START" in first else None,
                "first_task_s": min(task_starts) - t0 if task_starts else None,
                "finished_s": end - t0 if end else None,
                "finished_at": end,
            }
        )
    return out


class SideCpu:
    """CPU-seconds of one side: its daemon's cgroup (daemon, code server, run workers) plus the shared
    servers' cgroup (Postgres with its backends, Redis, Tansu, SeaweedFS), which only this side uses
    while it is measured. The driver (producer, polling, LLM server) is left out. None without cgroups."""

    def __init__(self, servers: CpuGroup | None, daemon: CpuGroup | None, marker: str, pids: list[int]):
        self.servers, self.daemon, self.marker, self.pids = servers, daemon, marker, pids

    def used(self) -> float | None:
        if self.servers is None or self.daemon is None:
            return None
        # The servers the stack started (Redis and Tansu have no data dir on their command line) and
        # any process naming the data dir (the postmaster daemonises, SeaweedFS).
        self.servers.adopt([p for p in self.pids if p not in set(self.servers.pids())])
        self.servers.adopt_matching(self.marker)
        return self.servers.usage_s() + self.daemon.usage_s()


def measure(
    stack: BenchStack,
    side: Side,
    events: int,
    singles: int,
    tenants: int,
    env: dict[str, str],
    sustained: tuple[float, float] = (0.0, 0.0),
    servers: CpuGroup | None = None,
) -> dict[str, Any]:
    """Warm-up, idle singles, the burst, then `sustained` = (rate per min, seconds), on a fresh daemon."""
    from dagster import DagsterInstance
    from kafka import KafkaProducer

    instance = DagsterInstance.get()
    producer = KafkaProducer(bootstrap_servers=stack.kafka, acks="all", linger_ms=5)
    pid = stack.start_daemon(side.workspace, f"daemon_{side.name}", env, platform=side.name == "platform")
    group = CpuGroup.create(f"e2e-{side.name}")
    if group is not None:
        group.adopt([pid])  # before it spawns its code server: every child inherits the group
    cpu = SideCpu(servers, group, str(stack.data_dir), stack.pids)
    cpu_s: dict[str, float | None] = {}
    prefix = f"{side.name}-{uuid.uuid4().hex[:8]}"
    try:
        started = time.monotonic()
        warm = run_timings(instance, side, publish(producer, side, [side.event(f"{prefix}-warm", "t0")]), 300)
        warm_s = time.monotonic() - started
        single: list[dict[str, Any]] = []
        for i in range(singles):
            time.sleep(6)  # idle: the previous run's worker is gone and the queue is empty
            batch = [side.event(f"{prefix}-single-{i}", "t0")]
            single += run_timings(instance, side, publish(producer, side, batch), 300)
        time.sleep(6)
        burst_events = [side.event(f"{prefix}-burst-{i}", f"t{i % tenants}") for i in range(events)]
        before = cpu.used()
        sent = publish(producer, side, burst_events)
        burst = run_timings(instance, side, sent, 60 + 20 * events)
        after = cpu.used()
        cpu_s["burst"] = after - before if after is not None and before is not None else None
        steady = (
            sustain(instance, producer, side, prefix, tenants, *sustained, cpu=cpu) if sustained[1] else None
        )
    finally:
        producer.close(timeout=5)
        stack.stop_daemon(pid)
        cancel_unfinished(instance)
        if group is not None:
            group.remove()
    ok = [r for r in burst if r["status"] == "SUCCESS"]
    span = (max(r["finished_at"] for r in ok) - min(sent.values())) if ok else None
    by_event: dict[str, int] = {}
    for r in burst:
        by_event[r["event_id"]] = by_event.get(r["event_id"], 0) + 1
    return {
        "warmup_s": round(warm_s, 2),
        "warmup": warm,
        "single": single,
        "burst": burst,
        "burst_events": events,
        "burst_succeeded": len(ok),
        "burst_runs": len(burst),
        "events_without_run": events - len(by_event),
        "events_with_several_runs": sum(1 for n in by_event.values() if n > 1),
        "throughput_per_min": round(60 * len(ok) / span, 2) if span else None,
        "burst_makespan_s": round(span, 2) if span else None,
        "burst_cpu_s_per_workflow": round(cpu_s["burst"] / events, 3) if cpu_s.get("burst") else None,
        "single_stats": {k: summary([r[k] for r in single if r[k] is not None]) for k in METRICS},
        "burst_stats": {k: summary([r[k] for r in burst if r[k] is not None]) for k in METRICS},
        "sustained": steady,
    }


def cancel_unfinished(instance: Any) -> None:
    """Runs a stopped daemon left queued or started (the sustained window's backlog) are canceled, so
    they take no run slot from the next side, which shares the run storage."""
    import dagster as dg

    unfinished = [
        dg.DagsterRunStatus.QUEUED,
        dg.DagsterRunStatus.NOT_STARTED,
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED,
    ]
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=unfinished)):
        instance.report_run_canceled(run, message="bench: the side's measurement is over")


def sustain(
    instance: Any,
    producer: Any,
    side: Side,
    prefix: str,
    tenants: int,
    rate: float,
    seconds: float,
    cpu: SideCpu | None = None,
) -> dict[str, Any]:
    """One event every 60/rate s for `seconds`; throughput = successes finished inside the window."""
    time.sleep(6)
    n = int(rate * seconds / 60)
    cpu_start = cpu.used() if cpu else None
    start = time.time()
    sent: dict[str, float] = {}
    for i in range(n):
        time.sleep(max(0.0, start + i * 60 / rate - time.time()))
        sent.update(publish(producer, side, [side.event(f"{prefix}-sustained-{i}", f"t{i % tenants}")]))
    end = start + seconds
    time.sleep(max(0.0, end - time.time()))
    cpu_end = cpu.used() if cpu else None
    # Runs still queued at the end of the window are not waited for (a slow side would take hours).
    runs = run_timings(instance, side, sent, max(0.0, end - time.time()) + 30)
    inside = [r for r in runs if r["status"] == "SUCCESS" and r["finished_at"] and r["finished_at"] <= end]
    by_event: dict[str, int] = {}
    for r in runs:
        by_event[r["event_id"]] = by_event.get(r["event_id"], 0) + 1
    return {
        "rate_per_min": rate,
        "seconds": seconds,
        "events": n,
        "finished_in_window": len(inside),
        "throughput_per_min": round(60 * len(inside) / seconds, 2),
        # CPU of the window (daemon tree + servers) over the workflows finished in it.
        "cpu_s_per_workflow": round((cpu_end - cpu_start) / len(inside), 3)
        if cpu_start is not None and cpu_end is not None and inside
        else None,
        "runs_seen": len(runs),
        "events_with_several_runs": sum(1 for k in by_event.values() if k > 1),
        "finished_s": summary([r["finished_s"] for r in inside]),
        "first_task_s": summary([r["first_task_s"] for r in inside if r["first_task_s"] is not None]),
    }


METRICS = ("queued_s", "run_start_s", "first_task_s", "finished_s")


def platform_checks(stack: BenchStack, result: dict[str, Any], llm_calls: int) -> dict[str, Any]:
    """Rows our tables hold for the burst: one succeeded workflow_runs row per event, 3 LLM calls each."""
    import sqlalchemy as sa

    from agentflow_dagster.db import make_engine

    engine = make_engine(stack.pg_url)
    ids = [r["event_id"] for r in result["burst"]]
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT status, count(*) FROM workflow_runs WHERE event_id = ANY(:ids) GROUP BY status"),
            {"ids": ids},
        ).all()
    engine.dispose()
    return {"workflow_runs_by_status": {s: n for s, n in rows}, "llm_calls_total": llm_calls}


def report(data: dict[str, Any], label: str) -> str:
    """The Markdown page."""
    b = data.get("baseline")
    sides = [(n, data[n]) for n in ("platform", "baseline", "baseline_multiprocess") if data.get(n)]
    m = data["machine"]
    lines = [
        f"# Benchmark 1: events -> finished workflows{f' ({label})' if label else ''}",
        "",
        f"{m['host']} · {m['at']} · load at start {m['loadavg_at_start']} · {m['note']}",
        "",
        f"Burst of {data['events']} events, 3 LLM tasks per workflow, LLM latency {data['latency_s']} s "
        f"per call; platform executor `{data['platform_executor']}`, launcher "
        f"`{data.get('platform_launcher')}`; instance: repo dagster.yaml (baseline: the same settings on "
        f"stock Dagster classes), max_concurrent_runs {data.get('max_concurrent_runs', 4)}, "
        f"{data['tenants']} tenants ({data.get('tenant_limit', 2)} runs each at most); baseline executor "
        f"`{data['baseline_executor']}`. CPU per workflow: {data.get('cpu_method', 'not measured')}, "
        "each side's daemon tree (daemon, code server, run workers) plus the servers (Postgres, Redis, "
        "Tansu, SeaweedFS), the benchmark driver excluded.",
        "",
    ]
    rows = []
    for name, side in sides:
        st = side["burst_stats"]
        rows.append(
            [
                name,
                side["throughput_per_min"],
                side["burst_makespan_s"],
                st["queued_s"]["p50"],
                st["queued_s"]["p99"],
                st["first_task_s"]["p50"],
                st["first_task_s"]["p99"],
                st["finished_s"]["p50"],
                st["finished_s"]["p99"],
                side.get("burst_cpu_s_per_workflow"),
                f"{side['burst_succeeded']}/{side['burst_events']}",
            ]
        )
    lines.append("## Burst")
    lines.append(
        md_table(
            [
                "system",
                "workflows/min",
                "makespan s",
                "queued p50",
                "queued p99",
                "first task p50",
                "first task p99",
                "finished p50",
                "finished p99",
                "CPU s / workflow",
                "succeeded",
            ],
            rows,
        )  # fmt: skip
    )
    if any(side.get("sustained") for _, side in sides):
        lines += ["", "## Sustained window (events at a fixed rate; finished inside the window)"]
        rows = []
        for name, side in sides:
            sus = side.get("sustained")
            if sus:
                rows.append([name, sus["rate_per_min"], sus["seconds"], sus["events"],
                             sus["finished_in_window"], sus["throughput_per_min"], sus["first_task_s"]["p50"],
                             sus["finished_s"]["p50"], sus["finished_s"]["p99"],
                             sus.get("cpu_s_per_workflow"), sus["events_with_several_runs"]])  # fmt: skip
        lines.append(
            md_table(
                [
                    "system",
                    "offered /min",
                    "window s",
                    "events",
                    "finished in window",
                    "workflows/min",
                    "first task p50 s",
                    "finished p50 s",
                    "finished p99 s",
                    "CPU s / workflow",
                    "doubled",
                ],
                rows,
            )  # fmt: skip
        )
    lines += ["", "## Single event on an idle system (seconds after submitted_at)"]
    rows = []
    for name, side in sides:
        st = side["single_stats"]
        rows.append([name, st["queued_s"]["p50"], st["run_start_s"]["p50"], st["first_task_s"]["p50"],
                     st["finished_s"]["p50"], st["first_task_s"]["n"]])  # fmt: skip
    lines.append(
        md_table(["system", "queued p50", "run start p50", "first task p50", "finished p50", "n"], rows)
    )
    if b is not None and data.get("ratios"):
        lines += ["", "## Ratios (platform / baseline, same run)"]
        lines.append(md_table(["metric", "ratio"], [[k, v] for k, v in data["ratios"].items()]))
    lines += ["", "## Guarantees", ""]
    for name, side in sides:
        lines.append(
            f"- {name}: {side['burst_runs']} runs for {side['burst_events']} events, "
            f"{side['events_without_run']} events without a run, "
            f"{side['events_with_several_runs']} with several"
        )
    lines.append(f"- platform tables: {data['platform_checks']}")
    return "\n".join(lines)


def plot(data: dict[str, Any], path: Path) -> None:
    """Latency distributions (box plots) and throughput bars."""
    plt = pyplot()
    sides = [(n, data[n]) for n in ("platform", "baseline", "baseline_multiprocess") if data.get(n)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 1]})
    series, labels = [], []
    for metric in ("queued_s", "first_task_s", "finished_s"):
        for name, side in sides:
            series.append([r[metric] for r in side["burst"] if r[metric] is not None])
            labels.append(f"{name}\n{metric[:-2]}")
    ax1.boxplot(series, tick_labels=labels, showfliers=True)
    ax1.set_ylabel("seconds after the event was submitted")
    ax1.set_title(f"Burst of {data['events']} events: latency")
    ax1.tick_params(axis="x", labelsize=8)
    # Sustained throughput when measured (the fair figure), else the burst's.
    ax2.bar(
        [n.replace("_", "\n") for n, _ in sides],
        [
            ((s.get("sustained") or {}).get("throughput_per_min") or s["throughput_per_min"] or 0)
            for _, s in sides
        ],
        color=["C0", "C1", "C2"][: len(sides)],
    )
    ax2.set_ylabel("workflows / min")
    ax2.set_title("Throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30)
    parser.add_argument(
        "--latency", type=float, default=0.2, help="seconds per LLM call (and per baseline op)"
    )
    parser.add_argument("--singles", type=int, default=3, help="single events on an idle system, per side")
    parser.add_argument("--tenants", type=int, default=4, help="the burst's events round-robin over tenants")
    parser.add_argument("--platform-executor", default="auto", choices=["auto", "in_process", "multiprocess"])
    parser.add_argument("--baseline-executor", default="in_process", choices=["in_process", "multiprocess"])
    parser.add_argument(
        "--multiprocess-column", action="store_true", help="also the baseline on Dagster's default executor"
    )
    parser.add_argument("--sustained-rate", type=float, default=240.0, help="events per minute offered")
    parser.add_argument("--sustained-seconds", type=float, default=120.0, help="0: no sustained window")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument(
        "--default-launcher",
        action="store_true",
        help="platform daemon uses Dagster's DefaultRunLauncher instead of the shipped WarmForkRunLauncher",
    )
    parser.add_argument(
        "--max-concurrent-runs",
        type=int,
        default=0,
        help="override dagster.yaml's max_concurrent_runs, both sides (0: keep)",
    )
    parser.add_argument(
        "--tenant-limit", type=int, default=0, help="override the per-tenant run limit, both sides (0: keep)"
    )
    parser.add_argument("--label", default="", help="suffix of the result files (one per lever setting)")
    args = parser.parse_args()

    data: dict[str, Any] = {
        "machine": machine(),
        "events": args.events,
        "latency_s": args.latency,
        "tenants": args.tenants,
        "platform_executor": args.platform_executor,
        "baseline_executor": args.baseline_executor,
    }
    tmp = Path(tempfile.mkdtemp(prefix="agentflow-bench-"))
    llm = LLMTestServer().start()
    llm.rule(lambda body: True, slow(args.latency))
    stack = BenchStack(tmp / "af")
    servers: CpuGroup | None = None
    try:
        stack.start(
            {
                "OPENAI_BASE_URL": llm.base_url,
                "OPENAI_API_KEY": "bench-key",
                "BENCH_TASK_SLEEP_S": str(args.latency),
                "BENCH_BASELINE_EXECUTOR": args.baseline_executor,
            }
        )
        stack.write_homes(args.default_launcher, args.max_concurrent_runs, args.tenant_limit)
        queue = stack.platform_instance["run_coordinator"]["config"]
        data["max_concurrent_runs"] = args.max_concurrent_runs or queue["max_concurrent_runs"]
        data["tenant_limit"] = args.tenant_limit or next(
            t["limit"] for t in queue["tag_concurrency_limits"] if t["key"] == "agentflow/tenant"
        )
        from resources.kafka import KafkaResource

        KafkaResource(bootstrap_servers=stack.kafka).ensure_topics([BASELINE_TOPIC], 4)
        servers = CpuGroup.create("e2e-servers")
        data["cpu_method"] = "cgroup cpuacct" if servers else "not measured (no writable cgroup)"
        platform = Side(
            "platform", names.TOPIC_REQUESTS, names.TAG_EVENT_ID, BENCH / "workspace_platform.yaml"
        )
        baseline = Side("baseline", BASELINE_TOPIC, "bench/event_id", BENCH / "workspace_baseline.yaml")
        env = {"BENCH_EXECUTOR": args.platform_executor} if args.platform_executor != "auto" else {}
        data["platform_launcher"] = "DefaultRunLauncher" if args.default_launcher else "WarmForkRunLauncher"
        print(f"platform: warm-up, {args.singles} idle singles, burst of {args.events}", flush=True)
        llm.requests.clear()
        sustained = (args.sustained_rate, args.sustained_seconds)
        data["sustained"] = {"rate_per_min": args.sustained_rate, "seconds": args.sustained_seconds}
        data["platform"] = measure(
            stack, platform, args.events, args.singles, args.tenants, env, sustained, servers
        )
        data["platform_checks"] = platform_checks(stack, data["platform"], llm.count())
        if not args.skip_baseline:
            print(f"baseline: warm-up, {args.singles} idle singles, burst of {args.events}", flush=True)
            data["baseline"] = measure(
                stack, baseline, args.events, args.singles, args.tenants, {}, sustained, servers
            )
            p, b = data["platform"], data["baseline"]
            data["ratios"] = {
                "sustained throughput": _ratio(
                    (p["sustained"] or {}).get("throughput_per_min"),
                    (b["sustained"] or {}).get("throughput_per_min"),
                ),
                "burst throughput": _ratio(p["throughput_per_min"], b["throughput_per_min"]),
                "burst first task p50": _ratio(
                    p["burst_stats"]["first_task_s"]["p50"], b["burst_stats"]["first_task_s"]["p50"]
                ),
                "burst finished p50": _ratio(
                    p["burst_stats"]["finished_s"]["p50"], b["burst_stats"]["finished_s"]["p50"]
                ),
                "burst CPU per workflow": _ratio(
                    p.get("burst_cpu_s_per_workflow"), b.get("burst_cpu_s_per_workflow")
                ),
                "idle first task p50": _ratio(
                    p["single_stats"]["first_task_s"]["p50"], b["single_stats"]["first_task_s"]["p50"]
                ),
            }
        if args.multiprocess_column:
            print("baseline on the multiprocess executor (extra column)", flush=True)
            mp = Side(
                "baseline_multiprocess", BASELINE_TOPIC, "bench/event_id", BENCH / "workspace_baseline.yaml"
            )
            mp_env = {"BENCH_BASELINE_EXECUTOR": "multiprocess"}
            data["baseline_multiprocess"] = measure(
                stack, mp, args.events, args.singles, args.tenants, mp_env, sustained, servers
            )
    finally:
        stack.stop()
        if servers is not None:
            servers.remove()
        llm.stop()
    name = "e2e_bench" + (f"_{args.label}" if args.label else "")
    js, md = write_results(name, data, report(data, args.label))
    plot(data, plot_path(name))
    print(md.read_text())
    print(f"wrote {js}, {md}, {plot_path(name)}")


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


if __name__ == "__main__":
    main()
