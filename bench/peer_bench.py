"""Peer benchmark: the same 3 x LLM-call workflow on LangGraph, DBOS and this platform, in one run.

    python bench/peer_bench.py [--events 30] [--latency 0.2] [--systems langgraph,dbos,platform]

Workload (issue 16): three sequential chat completions on a loopback OpenAI-compatible server that
answers after --latency s, durable state in Postgres, a warm-up, 3 single workflows on an idle system
(6 s apart), then a burst of --events at concurrency 8:
- LangGraph (`pip install .[bench]`): a 3-node StateGraph compiled with PostgresSaver
  (durability "sync": each step's checkpoint is written before the next step), 8 threads;
- DBOS: a workflow of three `@DBOS.step`s enqueued on a `Queue(concurrency=8)` (1 s queue poll);
- platform: `bench/e2e_bench.py --skip-baseline` (Kafka -> sensor -> one Dagster run per event).
Each system runs in its own process (the platform: its whole stack). CPU per workflow is measured
over the burst window (first submit -> last finish) across every process of that system, its
Postgres included: each system runs in its own cgroup (`bench/cpuacct.py`: every process it forks,
however short-lived, and its Postgres moved in by pid), read every 0.25 s. For the platform the
benchmark driver's own process (Kafka producer, polling the run records, the loopback LLM server) is
subtracted: the peers' drivers are their runtimes, the platform's is a client. Without a writable
cgroup it falls back to psutil sampling of the process trees (reported as `cpu_method`).
Writes bench/results/peer_bench.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BENCH, RESULTS, finish, machine, md_table, plot_path, pyplot, summary  # noqa: E402
from bench.cpuacct import CpuGroup, self_cpu_s  # noqa: E402

PROMPTS = ("classify", "summarize", "review")
SYSTEMS = ("langgraph", "dbos", "platform")
CONCURRENCY = 8


# --- the workers (one process per system) -----------------------------------------------------


def _llm(base_url: str) -> Any:
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="bench-key", max_retries=0)

    def call(step: str, text: str) -> str:
        resp = client.chat.completions.create(
            model="bench", messages=[{"role": "user", "content": f"{step}: {text}"}]
        )
        return resp.choices[0].message.content or ""

    return call


def phases(run_one: Any, run_burst: Any, events: int) -> dict[str, Any]:
    """Warm-up, idle singles, burst; seconds from submit to result."""
    t0 = time.time()
    run_one("warm")
    warm = time.time() - t0
    singles = []
    for i in range(3):
        time.sleep(6)
        t0 = time.time()
        run_one(f"single-{i}")
        singles.append(time.time() - t0)
    time.sleep(6)
    start = time.time()
    latencies = run_burst([f"burst-{i}" for i in range(events)])
    end = time.time()
    return {
        "warmup_s": round(warm, 3),
        "idle_s": summary(singles),
        "burst_latency_s": summary(latencies),
        "burst_samples_s": latencies,
        "burst_window": [start, end],
        "throughput_per_min": round(60 * events / (end - start), 2),
        "completed": len(latencies),
    }


def worker_langgraph(pg_url: str, base_url: str, events: int) -> dict[str, Any]:
    from typing import TypedDict

    from langgraph.checkpoint.postgres import PostgresSaver
    from langgraph.graph import END, START, StateGraph
    from psycopg_pool import ConnectionPool

    call = _llm(base_url)

    class State(TypedDict, total=False):
        message: str
        classify: str
        summarize: str
        review: str

    def node(step: str, source: str) -> Any:
        return lambda state: {step: call(step, state[source])}

    graph = StateGraph(State)
    graph.add_node("classify", node("classify", "message"))
    graph.add_node("summarize", node("summarize", "classify"))
    graph.add_node("review", node("review", "summarize"))
    graph.add_edge(START, "classify")
    graph.add_edge("classify", "summarize")
    graph.add_edge("summarize", "review")
    graph.add_edge("review", END)
    pool = ConnectionPool(
        pg_url, max_size=CONCURRENCY + 2, kwargs={"autocommit": True, "prepare_threshold": 0}
    )
    saver = PostgresSaver(pool)  # type: ignore[arg-type]
    saver.setup()
    app = graph.compile(checkpointer=saver)

    def run_one(key: str) -> float:
        t0 = time.time()
        config = {"configurable": {"thread_id": f"{key}-{uuid.uuid4().hex}"}}
        out = app.invoke({"message": f"invoice {key} charged twice"}, config, durability="sync")  # type: ignore[arg-type]
        assert out["review"]
        return time.time() - t0

    def run_burst(keys: list[str]) -> list[float]:
        with ThreadPoolExecutor(CONCURRENCY) as pool_:
            return list(pool_.map(run_one, keys))

    try:
        return phases(run_one, run_burst, events)
    finally:
        pool.close()


def worker_dbos(pg_url: str, base_url: str, events: int) -> dict[str, Any]:
    from dbos import DBOS, DBOSConfig

    call = _llm(base_url)
    DBOS(config=DBOSConfig(name="peer-bench", system_database_url=pg_url))

    @DBOS.step()
    def step(name: str, text: str) -> str:
        return str(call(name, text))

    @DBOS.workflow()
    def three_step(message: str) -> str:
        return str(step("review", step("summarize", step("classify", message))))

    DBOS.launch()
    queue = DBOS.register_queue("bench", concurrency=CONCURRENCY)

    def run_one(key: str) -> float:
        t0 = time.time()
        assert queue.enqueue(three_step, f"invoice {key} charged twice").get_result()
        return time.time() - t0

    def run_burst(keys: list[str]) -> list[float]:
        t0 = time.time()
        handles = [queue.enqueue(three_step, f"invoice {k} charged twice") for k in keys]
        out = []
        for h in handles:
            assert h.get_result()
            out.append(time.time() - t0)
        return out

    try:
        return phases(run_one, run_burst, events)
    finally:
        DBOS.destroy()


# --- the driver -------------------------------------------------------------------------------


def cpu_of(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            continue
    return total


class Sampler(threading.Thread):
    """(epoch, cumulative CPU s) of a system: its cgroup (processes + the postmaster whose cmdline has
    `marker`, moved in as they appear) minus `exclude`'s own CPU; psutil over the trees without one."""

    def __init__(self, name: str, marker: str):
        super().__init__(daemon=True)
        self.marker = marker
        self.root = 0
        self.exclude = 0
        self.group = CpuGroup.create(name)
        self.method = "cgroup cpuacct" if self.group else "psutil process-tree sampling"
        self.series: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def preexec(self) -> None:
        if self.group:
            self.group.join_in_child()

    def procs(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.root)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return []
        seen = {p.pid for p in tree}
        for p in psutil.process_iter(["cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if p.pid not in seen and self.marker in cmd and "postgres" in cmd and " -D " in cmd:
                with_children = [p, *p.children(recursive=True)]
                tree += [c for c in with_children if c.pid not in seen]
                seen |= {c.pid for c in with_children}
        return tree

    def used(self) -> float | None:
        if self.group:
            self.group.adopt_matching(self.marker)  # the postmaster and its backends, once they exist
            return self.group.usage_s() - (self_cpu_s(self.exclude) if self.exclude else 0.0)
        procs = self.procs()
        return cpu_of(procs) if procs else None

    def run(self) -> None:
        while not self.stop.wait(0.25):
            used = self.used()
            if used is not None:
                self.series.append((time.time(), used))
        if self.group:
            self.group.remove()

    def cpu_between(self, start: float, end: float) -> float | None:
        """CPU spent from the first sample at or after `start` to the first at or after `end`."""

        def at(t: float) -> float | None:
            later = [c for ts, c in self.series if ts >= t]
            return later[0] if later else (self.series[-1][1] if self.series else None)

        a, b = at(start), at(end)
        return None if a is None or b is None else b - a


def run_peer(system: str, pg_url: str, pg_marker: str, base_url: str, events: int) -> dict[str, Any]:
    args = [sys.executable, __file__, "--worker", system, "--pg", pg_url, "--llm", base_url]
    sampler = Sampler(f"peer-{system}", pg_marker)
    proc = subprocess.Popen(
        [*args, "--events", str(events)], stdout=subprocess.PIPE, text=True, preexec_fn=sampler.preexec
    )
    sampler.root = proc.pid
    sampler.start()
    stdout, _ = proc.communicate(timeout=1800)
    sampler.stop.set()
    sampler.join()
    if proc.returncode:
        raise RuntimeError(f"{system} worker failed (exit {proc.returncode})")
    result = json.loads(stdout.strip().splitlines()[-1])
    cpu = sampler.cpu_between(*result["burst_window"])
    result["burst_cpu_s"] = round(cpu, 2) if cpu is not None else None
    result["cpu_s_per_workflow"] = round(cpu / events, 3) if cpu is not None else None
    result["cpu_method"] = sampler.method
    return result


def run_platform(events: int, latency: float) -> dict[str, Any]:
    label = f"peer_platform_{uuid.uuid4().hex[:6]}"
    args = [sys.executable, str(BENCH / "e2e_bench.py"), "--skip-baseline", "--sustained-seconds", "0"]
    args += ["--events", str(events), "--latency", str(latency), "--label", label]
    # Its own TMPDIR: the stack's data dir (and the Postgres found by it) is this run's, not another bench's.
    tmp = tempfile.mkdtemp(prefix="peer-platform-")
    sampler = Sampler("peer-platform", tmp)
    env = {**os.environ, "TMPDIR": tmp}
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, cwd=BENCH.parent, preexec_fn=sampler.preexec, env=env
    )
    # The driver (producer, polling, LLM server) is not the platform.
    sampler.root = sampler.exclude = proc.pid
    sampler.start()
    proc.wait(timeout=3600)
    sampler.stop.set()
    sampler.join()
    if proc.returncode:
        raise RuntimeError(f"e2e_bench.py failed (exit {proc.returncode})")
    files = [RESULTS / f"e2e_bench_{label}.{ext}" for ext in ("json", "md", "png")]
    data = json.loads(files[0].read_text())
    for f in files:
        f.unlink(missing_ok=True)
    side = data["platform"]
    burst = [r for r in side["burst"] if r["finished_at"]]
    window = [min(r["submitted_at"] for r in burst), max(r["finished_at"] for r in burst)]
    cpu = sampler.cpu_between(*window)
    return {
        "idle_s": side["single_stats"]["finished_s"],
        "burst_latency_s": side["burst_stats"]["finished_s"],
        "burst_samples_s": [r["finished_s"] for r in burst],
        "burst_window": window,
        "throughput_per_min": side["throughput_per_min"],
        "completed": side["burst_succeeded"],
        "burst_cpu_s": round(cpu, 2) if cpu is not None else None,
        "cpu_s_per_workflow": round(cpu / events, 3) if cpu is not None else None,
        "cpu_method": sampler.method,
        "checks": data["platform_checks"],
        "llm_calls": data["platform_checks"]["llm_calls_total"],  # its own LLM server, warm-up included
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--systems", default="langgraph,dbos,platform")
    parser.add_argument("--label", default="")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--pg", help=argparse.SUPPRESS)
    parser.add_argument("--llm", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        fn = {"langgraph": worker_langgraph, "dbos": worker_dbos}[args.worker]
        print(json.dumps(fn(args.pg, args.llm, args.events)))
        return

    from agentflow_dagster.stack import services
    from tests.support.llm_server import LLMTestServer, slow

    data: dict[str, Any] = {"machine": machine(), "events": args.events, "latency_s": args.latency}
    llm = LLMTestServer().start()
    llm.rule(lambda body: True, slow(args.latency))
    tmp = Path(tempfile.mkdtemp(prefix="peer-bench-"))
    try:
        for system in args.systems.split(","):
            print(f"{system} ...", flush=True)
            llm.requests.clear()
            try:
                if system == "platform":
                    data[system] = run_platform(args.events, args.latency)
                else:
                    pg = services.start_postgres(tmp / system, services.free_port())
                    try:
                        marker = str(tmp / system)
                        data[system] = run_peer(system, pg.address, marker, llm.base_url, args.events)
                    finally:
                        services.stop_postgres(tmp / system)
            except Exception as exc:  # the other systems' figures are still worth writing
                data.setdefault("failed", {})[system] = f"{type(exc).__name__}: {exc}"
                continue
            data[system].setdefault("llm_calls", llm.count())
    finally:
        llm.stop()
    finish("peer_bench", args.label, data, markdown(data), plot)


def markdown(d: dict[str, Any]) -> str:
    m = d["machine"]
    rows = []
    for name in SYSTEMS:
        s = d.get(name)
        if s:
            done = f"{s['completed']}/{d['events']}"
            rows.append([name, s["throughput_per_min"], s["idle_s"]["p50"], s["burst_latency_s"]["p50"],
                         s["burst_latency_s"]["p99"], s["cpu_s_per_workflow"], done,
                         s["llm_calls"]])  # fmt: skip
    return "\n".join(
        [
            "# Peer benchmark: 3 sequential LLM calls per workflow, Postgres durability",
            "",
            f"{m['host']}, {m['at']}, load average at start {m['loadavg_at_start']} ({m['note']}).",
            f"LLM latency {d['latency_s']} s per call (loopback server); warm-up, 3 idle singles, burst of "
            f"{d['events']} at concurrency {CONCURRENCY}. CPU over the burst window, every process of the "
            "system and its Postgres (method: "
            + ", ".join(sorted({str(d[n].get("cpu_method", "psutil")) for n in SYSTEMS if d.get(n)}))
            + "; the platform's benchmark driver excluded).",
            "",
            md_table(
                [
                    "system",
                    "burst workflows/min",
                    "idle submit -> finished p50 s",
                    "burst latency p50 s",
                    "burst latency p99 s",
                    "CPU s per workflow",
                    "completed",
                    "LLM calls",
                ],
                rows,
            ),  # fmt: skip
        ]
    )


def plot(d: dict[str, Any], name: str) -> None:
    plt = pyplot()
    systems = [s for s in ("langgraph", "dbos", "platform") if d.get(s)]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(13, 4))
    ax1.boxplot([d[s]["burst_samples_s"] for s in systems], tick_labels=systems)
    ax1.set_yscale("log")
    ax1.set_ylabel("submit -> finished, s (log)")
    ax1.set_title(f"burst of {d['events']}")
    ax2.bar(systems, [d[s]["throughput_per_min"] for s in systems], color=["C0", "C1", "C2"][: len(systems)])
    ax2.set_title("workflows / min (burst)")
    ax3.bar(
        systems, [d[s]["cpu_s_per_workflow"] or 0 for s in systems], color=["C0", "C1", "C2"][: len(systems)]
    )
    ax3.set_title("CPU s per workflow (all processes)")
    fig.tight_layout()
    fig.savefig(plot_path(name), dpi=110)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
