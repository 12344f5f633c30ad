"""Sustained load: events at a steady rate for several minutes, then an exact count check.

    python bench/load_bench.py --rate 12 --minutes 5 [--default-launcher] [--latency 0.2] [--label NAME]

The stack of benchmark 1 (`e2e_bench.py`: embedded Postgres, Redis, Tansu, the repo's dagster.yaml,
one dagster-daemon on the platform code location, a loopback LLM server answering after a fixed
latency). After one warm-up event, `--rate` events a minute go to `agentflow.workflow.requests`, each
at its scheduled time, for `--minutes`; then the run waits for every result. The check: every
event_id has exactly one event on `agentflow.workflow.results` and exactly one `workflow_runs` row
(missing and duplicated ids are listed). Reported: the rate held (produced and finished per minute),
event -> run finished and event -> result published latencies, CPU and memory of the stack's
processes (sampled with psutil) and the growth of the Postgres database.
Writes bench/results/load[_LABEL].{json,md,png}.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil
from common import BENCH, BenchStack, machine, md_table, plot_path, pyplot, summary, write_results
from e2e_bench import Side, publish, run_timings

from agentflow_dagster import names
from tests.support.llm_server import LLMTestServer, slow


def count_check(
    event_ids: Iterable[str], result_ids: Iterable[str], history_ids: Iterable[str]
) -> dict[str, Any]:
    """Exactly one result event and one history row per event: what is missing, doubled or unexpected."""
    wanted = list(event_ids)
    wanted_set = set(wanted)
    results, rows = Counter(result_ids), Counter(history_ids)
    check = {
        "events": len(wanted),
        "results": sum(n for e, n in results.items() if e in wanted_set),
        "history_rows": sum(n for e, n in rows.items() if e in wanted_set),
        "missing_result": sorted(e for e in wanted_set if results[e] == 0),
        "duplicate_result": {e: n for e, n in sorted(results.items()) if e in wanted_set and n > 1},
        "missing_history_row": sorted(e for e in wanted_set if rows[e] == 0),
        "duplicate_history_row": {e: n for e, n in sorted(rows.items()) if e in wanted_set and n > 1},
        "duplicate_event_ids_produced": sorted(e for e, n in Counter(wanted).items() if n > 1),
    }
    check["ok"] = not any(
        check[k]
        for k in (
            "missing_result",
            "duplicate_result",
            "missing_history_row",
            "duplicate_history_row",
            "duplicate_event_ids_produced",
        )
    )
    return check


def read_results(bootstrap: str, wanted: set[str], timeout: float, settle_s: float = 3.0) -> list[Any]:
    """Every result event of `wanted` on the results topic from offset 0 (assign + seek), as
    (event_id, status, broker timestamp s); polled until each has one, then `settle_s` more for extras."""
    from kafka import KafkaConsumer, TopicPartition

    from agentflow_dagster.events import WorkflowResult

    consumer = KafkaConsumer(
        bootstrap_servers=[bootstrap], group_id=None, enable_auto_commit=False, fetch_max_wait_ms=100
    )
    found: list[tuple[str, str, float]] = []
    try:
        partitions = consumer.partitions_for_topic(names.TOPIC_RESULTS) or {0}
        tps = [TopicPartition(names.TOPIC_RESULTS, p) for p in sorted(partitions)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        deadline, settled_at = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                for msg in batch:
                    try:
                        result = WorkflowResult.model_validate_json(msg.value)
                    except ValueError:
                        continue
                    if result.event_id in wanted:
                        found.append((result.event_id, result.status, msg.timestamp / 1000))
            if settled_at is None and wanted <= {e for e, _, _ in found}:
                settled_at = time.monotonic() + settle_s
            if settled_at is not None and time.monotonic() >= settled_at:
                break
    finally:
        consumer.close()
    return found


class ResourceSampler:
    """CPU seconds and memory of the stack's process groups, sampled every `interval` seconds.

    CPU of a group = own time of its live processes + the `children_*` time of processes they reaped,
    so short-lived run workers are counted once they exit. Memory is PSS (shared pages split between
    the processes sharing them; Postgres backends share their buffers), RSS where PSS is unreadable.
    """

    def __init__(self, roots: dict[str, int], interval: float = 2.0):
        self.roots, self.interval = roots, interval
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="resource-sampler", daemon=True)

    def start(self) -> ResourceSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _group(self, pid: int) -> list[psutil.Process]:
        try:
            root = psutil.Process(pid)
            # This process started the servers: its children are the other groups.
            return [root] if pid == os.getpid() else [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def _members(self, name: str, pid: int) -> list[psutil.Process]:
        """The processes of group `name` (a subclass may split one process tree into several groups)."""
        return self._group(pid)

    def sample(self) -> dict[str, Any]:
        at = time.time()
        groups: dict[str, Any] = {}
        for name, pid in self.roots.items():
            cpu, mem, count = 0.0, 0, 0
            for proc in self._members(name, pid):
                try:
                    with proc.oneshot():
                        t = proc.cpu_times()
                        cpu += t.user + t.system + t.children_user + t.children_system
                        try:
                            mem += proc.memory_full_info().pss
                        except (psutil.AccessDenied, AttributeError):
                            mem += proc.memory_info().rss
                    count += 1
                except psutil.Error:
                    continue  # exited between listing and reading
            groups[name] = {"cpu_s": cpu, "mem_bytes": mem, "processes": count}
        total = psutil.cpu_times()
        busy = (
            total.user + total.system + total.nice + getattr(total, "irq", 0) + getattr(total, "softirq", 0)
        )
        return {"at": at, "groups": groups, "machine_busy_s": busy}

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.sample())
            self._stop.wait(self.interval)
        self.samples.append(self.sample())

    def report(self, start: float, end: float) -> dict[str, Any]:
        """Per group over [start, end]: CPU (cores used on average), peak and mean memory (MiB)."""
        window = [s for s in self.samples if start <= s["at"] <= end]
        if len(window) < 2:
            return {}
        first, last = window[0], window[-1]
        span = last["at"] - first["at"]
        out: dict[str, Any] = {}
        for name in self.roots:
            # Counters only grow for a fixed set of processes; a group losing a process (a code server
            # reaped by nobody) can step down, so sum the positive steps.
            cpu = sum(
                max(0.0, b["groups"][name]["cpu_s"] - a["groups"][name]["cpu_s"])
                for a, b in zip(window, window[1:], strict=False)
            )
            mem = [s["groups"][name]["mem_bytes"] / 2**20 for s in window]
            procs = [s["groups"][name]["processes"] for s in window]
            out[name] = {
                "cpu_cores": round(cpu / span, 3),
                "cpu_s": round(cpu, 1),
                "mem_peak_mib": round(max(mem), 1),
                "mem_mean_mib": round(sum(mem) / len(mem), 1),
                "processes_max": max(procs),
            }
        cores = psutil.cpu_count() or 1
        out["machine (all work, other sessions too)"] = {
            "cpu_cores": round((last["machine_busy_s"] - first["machine_busy_s"]) / span, 3),
            "cpu_of_total": f"{(last['machine_busy_s'] - first['machine_busy_s']) / span / cores:.0%}",
        }
        return out


def db_size(pg_url: str) -> int:
    import sqlalchemy as sa

    from agentflow_dagster.db import make_engine

    engine = make_engine(pg_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT pg_database_size(current_database())")).scalar_one())
    finally:
        engine.dispose()


def history_rows(pg_url: str, event_ids: list[str]) -> list[tuple[str, str]]:
    """(event_id, status) of every workflow_runs row for these events."""
    import sqlalchemy as sa

    from agentflow_dagster.db import make_engine

    engine = make_engine(pg_url)
    try:
        with engine.connect() as conn:
            found = conn.execute(
                sa.text("SELECT event_id, status FROM workflow_runs WHERE event_id = ANY(:ids)"),
                {"ids": event_ids},
            ).all()
        return [(e, s) for e, s in found]
    finally:
        engine.dispose()


def produce_steady(producer: Any, side: Side, prefix: str, rate: float, minutes: float, tenants: int) -> dict:
    """One event every 60/rate seconds on a fixed schedule (a late send does not shift the next one)."""
    interval = 60.0 / rate
    count = max(1, round(rate * minutes))
    sent: dict[str, float] = {}
    lag: list[float] = []
    start = time.monotonic()
    for i in range(count):
        due = start + i * interval
        time.sleep(max(0.0, due - time.monotonic()))
        lag.append(time.monotonic() - due)
        sent.update(publish(producer, side, [side.event(f"{prefix}-{i:05d}", f"t{i % tenants}")]))
        if (i + 1) % max(1, count // 10) == 0:
            print(f"  produced {i + 1}/{count}", flush=True)
    return {"sent": sent, "send_lag_s": lag}


def analyse(
    sent: dict[str, float], timings: list[dict[str, Any]], results: list[tuple[str, str, float]]
) -> dict[str, Any]:
    """Rates (produced, finished) and latencies (event -> run finished, event -> result published)."""
    submits = sorted(sent.values())
    produce_span = submits[-1] - submits[0] if len(submits) > 1 else 0.0
    produced_per_min = 60 * (len(submits) - 1) / produce_span if produce_span else None
    ok = [r for r in timings if r["status"] == "SUCCESS" and r["finished_at"]]
    finishes = sorted(r["finished_at"] for r in ok)
    # Finished rate in the steady window (first submit .. last submit) and over the whole run.
    in_window = [f for f in finishes if submits[0] <= f <= submits[-1]]
    first_result: dict[str, float] = {}
    for event_id, _, ts in results:
        first_result[event_id] = min(ts, first_result.get(event_id, ts))
    published = [first_result[e] - sent[e] for e in sent if e in first_result]
    return {
        "produced": len(submits),
        "produced_per_min": round(produced_per_min, 2) if produced_per_min else None,
        "finished_ok": len(ok),
        "finished_per_min_during_load": round(60 * len(in_window) / produce_span, 2)
        if produce_span
        else None,
        "finished_per_min_overall": round(60 * len(ok) / (finishes[-1] - submits[0]), 2) if ok else None,
        "drain_after_last_event_s": round(finishes[-1] - submits[-1], 1) if ok else None,
        "finished_s": summary([r["finished_s"] for r in ok]),
        "first_task_s": summary([r["first_task_s"] for r in ok if r["first_task_s"] is not None]),
        "queued_s": summary([r["queued_s"] for r in timings if r["queued_s"] is not None]),
        "result_published_s": summary(published),
    }


def report(data: dict[str, Any]) -> str:
    """The Markdown page."""
    m, a, c = data["machine"], data["analysis"], data["count_check"]
    lines = [
        f"# Sustained load: {data['rate_per_min']} events/min for {data['minutes']} min"
        + (f" ({data['label']})" if data["label"] else ""),
        "",
        f"{m['host']} · {m['at']} · load at start {m['loadavg_at_start']} · {m['note']}",
        "",
        f"Workflow `{data['workflow']}` (3 LLM tasks), LLM latency {data['latency_s']} s per call, "
        f"launcher `{data['launcher']}`, {data['tenants']} tenants, repo dagster.yaml.",
        "",
        "## Rate held",
        md_table(
            [
                "produced",
                "produced /min",
                "finished ok",
                "finished /min (during load)",
                "finished /min (overall)",
                "drain after last event s",
                "max send lag s",
            ],
            [
                [
                    a["produced"],
                    a["produced_per_min"],
                    a["finished_ok"],
                    a["finished_per_min_during_load"],
                    a["finished_per_min_overall"],
                    a["drain_after_last_event_s"],
                    data["max_send_lag_s"],
                ]
            ],
        ),  # fmt: skip
        "",
        "## Latency (seconds after the event's submitted_at)",
        md_table(
            ["stage", "n", "p50", "p99", "mean", "max"],
            [
                [k, a[k]["n"], a[k]["p50"], a[k]["p99"], a[k]["mean"], a[k]["max"]]
                for k in ("queued_s", "first_task_s", "finished_s", "result_published_s")
            ],
        ),
        "",
        "## Count check",
        "",
        f"- {c['events']} events (warm-up included), {c['results']} result events, "
        f"{c['history_rows']} `workflow_runs` rows: **{'OK' if c['ok'] else 'FAILED'}**",
        f"- missing result: {c['missing_result'] or 'none'}; duplicate result: "
        f"{c['duplicate_result'] or 'none'}",
        f"- missing history row: {c['missing_history_row'] or 'none'}; duplicate history row: "
        f"{c['duplicate_history_row'] or 'none'}",
        f"- result statuses: {data['result_statuses']}; history statuses: {data['history_statuses']}",
        f"- LLM calls: {data['llm_calls']} ({data['llm_calls_per_workflow']} per workflow)",
        "",
        "## Resources during the load (sampled every "
        f"{data['sample_interval_s']} s; CPU in cores used on average, memory PSS)",
    ]
    rows = [
        [name, r.get("cpu_cores"), r.get("cpu_s"), r.get("mem_mean_mib"), r.get("mem_peak_mib"),
         r.get("processes_max"), r.get("cpu_of_total", "")]
        for name, r in data["resources"].items()
    ]  # fmt: skip
    lines.append(
        md_table(
            ["group", "CPU cores", "CPU s", "mem mean MiB", "mem peak MiB", "processes", "of machine"], rows
        )
    )
    db = data["db_size"]
    lines += [
        "",
        f"Postgres database: {db['before_mib']} MiB after the warm-up -> {db['after_mib']} MiB after the "
        f"load: +{db['growth_mib']} MiB, {db['bytes_per_workflow']} bytes per workflow (Dagster's event "
        "log included; no purge ran).",
    ]
    return "\n".join(lines)


def plot(data: dict[str, Any], path: Path) -> None:
    """Produced vs finished over time, latency per event over time, CPU per group."""
    plt = pyplot()
    t0 = min(data["sent"].values())
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.5))
    submits = sorted(s - t0 for s in data["sent"].values())
    finishes = sorted(r["finished_at"] - t0 for r in data["timings"] if r["finished_at"])
    ax1.step(submits, range(1, len(submits) + 1), where="post", label="produced")
    ax1.step(finishes, range(1, len(finishes) + 1), where="post", label="finished")
    ax1.set_xlabel("seconds since the first event")
    ax1.set_ylabel("workflows (cumulative)")
    ax1.set_title(f"Rate: {data['rate_per_min']}/min for {data['minutes']} min")
    ax1.legend()
    ok = [r for r in data["timings"] if r["finished_s"] is not None]
    ax2.scatter([r["submitted_at"] - t0 for r in ok], [r["finished_s"] for r in ok], s=10)
    ax2.set_xlabel("event submitted (s since the first event)")
    ax2.set_ylabel("event -> run finished (s)")
    ax2.set_title("Latency per event")
    samples = data["samples"]
    for name in data["process_groups"]:
        xs, ys = [], []
        for a, b in zip(samples, samples[1:], strict=False):
            dt = b["at"] - a["at"]
            if dt > 0:
                xs.append(b["at"] - t0)
                ys.append(max(0.0, b["groups"][name]["cpu_s"] - a["groups"][name]["cpu_s"]) / dt)
        ax3.plot(xs, ys, label=name, linewidth=1)
    ax3.set_xlabel("seconds since the first event")
    ax3.set_ylabel("CPU cores")
    ax3.set_title("CPU of the stack's processes")
    ax3.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=12.0, help="events per minute")
    parser.add_argument("--minutes", type=float, default=5.0, help="how long events are produced")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per LLM call")
    parser.add_argument("--tenants", type=int, default=4, help="events round-robin over tenants")
    parser.add_argument(
        "--default-launcher", action="store_true", help="DefaultRunLauncher instead of the shipped warm one"
    )
    parser.add_argument("--drain-timeout", type=float, default=900, help="max seconds to wait for results")
    parser.add_argument("--sample-interval", type=float, default=2.0)
    parser.add_argument("--label", default="", help="suffix of the result files")
    args = parser.parse_args()

    from dagster import DagsterInstance
    from kafka import KafkaProducer

    data: dict[str, Any] = {
        "machine": machine(),
        "rate_per_min": args.rate,
        "minutes": args.minutes,
        "latency_s": args.latency,
        "tenants": args.tenants,
        "label": args.label,
        "workflow": "bench_three_step",
        "launcher": "DefaultRunLauncher" if args.default_launcher else "WarmForkRunLauncher",
        "sample_interval_s": args.sample_interval,
    }
    tmp = Path(tempfile.mkdtemp(prefix="agentflow-load-"))
    llm = LLMTestServer().start()
    llm.rule(lambda body: True, slow(args.latency))
    stack = BenchStack(tmp / "af")
    side = Side("platform", names.TOPIC_REQUESTS, names.TAG_EVENT_ID, BENCH / "workspace_platform.yaml")
    daemon = 0
    sampler: ResourceSampler | None = None
    try:
        stack.start({"OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "bench-key"})
        stack.write_homes(default_launcher=args.default_launcher)
        instance = DagsterInstance.get()
        producer = KafkaProducer(bootstrap_servers=stack.kafka, acks="all", linger_ms=5)
        daemon = stack.start_daemon(side.workspace, "daemon_load", platform=True)
        prefix = f"load-{uuid.uuid4().hex[:8]}"
        print("warm-up event", flush=True)
        warm = publish(producer, side, [side.event(f"{prefix}-warm", "t0")])
        run_timings(instance, side, warm, 300)
        roots = {"dagster (daemon, code server, run workers)": daemon}
        roots.update(stack.servers)  # postgres, redis, seaweedfs (s3), tansu (kafka)
        roots["bench driver (producer, LLM test server)"] = os.getpid()
        data["process_groups"] = list(roots)
        sampler = ResourceSampler(roots, args.sample_interval).start()
        before = db_size(stack.pg_url)
        llm.requests.clear()
        load_start = time.time()
        print(f"producing {args.rate}/min for {args.minutes} min", flush=True)
        produced = produce_steady(producer, side, prefix, args.rate, args.minutes, args.tenants)
        sent = produced["sent"]
        load_end = time.time()
        print("waiting for every result", flush=True)
        wanted = set(sent) | set(warm)
        results = read_results(stack.kafka, wanted, args.drain_timeout)
        timings = run_timings(instance, side, sent, 120)
        drained = time.time()
        sampler.stop()
        after = db_size(stack.pg_url)
        producer.close(timeout=5)
        rows = history_rows(stack.pg_url, sorted(wanted))
        data["count_check"] = count_check([*warm, *sent], [e for e, _, _ in results], [e for e, _ in rows])
        data["result_statuses"] = dict(Counter(s for _, s, _ in results))
        data["history_statuses"] = dict(Counter(s for _, s in rows))
        data["llm_calls"] = llm.count()
        data["llm_calls_per_workflow"] = round(llm.count() / len(sent), 2)
        data["max_send_lag_s"] = round(max(produced["send_lag_s"]), 3)
        data["analysis"] = analyse(sent, timings, results)
        data["resources"] = sampler.report(load_start, load_end)
        data["resources_including_drain"] = sampler.report(load_start, drained)
        data["db_size"] = {
            "before_mib": round(before / 2**20, 1),
            "after_mib": round(after / 2**20, 1),
            "growth_mib": round((after - before) / 2**20, 1),
            "bytes_per_workflow": (after - before) // max(1, len(sent)),
        }
        data["sent"], data["timings"], data["samples"] = sent, timings, sampler.samples
    finally:
        if sampler is not None:
            sampler.stop()
        if daemon:
            stack.stop_daemon(daemon)
        stack.stop()
        llm.stop()
    name = "load" + (f"_{args.label}" if args.label else "")
    js, md = write_results(name, data, report(data))
    plot(data, plot_path(name))
    print(md.read_text())
    print(f"wrote {js}, {md}, {plot_path(name)}")
    if not data["count_check"]["ok"]:
        raise SystemExit("count check failed: see the report")


if __name__ == "__main__":
    main()
