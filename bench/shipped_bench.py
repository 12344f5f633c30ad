"""Shipped workflows under sustained load, and the soak (issue 16).

    python bench/shipped_bench.py [--workflows support_triage,research_report] [--rates 30,60,120]
                                  [--minutes 5] [--chunks 2500] [--latency 0.2] [--label NAME]
    python bench/shipped_bench.py --soak          # support_triage at 60/min for 30 min, label "soak"

One throwaway stack (BenchStack: Postgres, Redis, SeaweedFS S3, Tansu) plus the embedding service the
real stack starts (every run worker embeds through it, AGENTFLOW_EMBED_URL), and the platform daemon
serving the repo's own code location (workspace.yaml -> agentflow_dagster.definitions: the shipped
example project, its request, approval and run-status sensors). Before anything is timed, the repo's
README and docs/ plus generated support tickets and policies (--chunks chunks in all) are indexed into
`support_kb` (the collection the router names) and `research_docs` (research_report's default) with
`agentflow ingest --wait`: the document sensor and the RAG assets of the daemon, as a user would.
The LLM is tests/support/llm_server.py on loopback answering every call after --latency seconds
with an answer valid for the agent's output schema (router: `support_kb` and a question the corpus
answers; planner: two such questions, so the research fan-out retrieves from `research_docs`).

Each (workflow, rate) step produces events at that rate for --minutes on the same stack, then drains.
Per step: produced and finished per minute (and per 1-minute bucket), event -> first task and
-> finished p50/p99 (Dagster event log), result published p50/p99 (results topic), CPU-seconds per
workflow of every process group (daemon tree with its run workers, Postgres, Redis, Tansu, SeaweedFS,
the embedding service, this driver with the LLM server) over the load and its drain, memory over
time (the daemon tree split into daemon/code server/forkserver and run workers), Postgres bytes per
workflow, LLM calls per workflow, and the exact counts: one run, one result event, one
`workflow_runs` row per event (missing and duplicated ids listed).
Writes bench/results/shipped_bench[_LABEL].{json,md,png}.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import e2e_bench
import psutil
from common import REPO, BenchStack, exit_on_sigterm, finish, leftover_processes, machine, md_table, pyplot
from e2e_bench import Side, publish, run_timings
from load_bench import (
    ResourceSampler,
    analyse,
    count_check,
    db_size,
    history_rows,
    produce_steady,
    read_results,
)

from agentflow_dagster import names
from tests.support.llm_server import Action, LLMTestServer, instance

SUPPORT_KB = "support_kb"
RESEARCH_DOCS = "research_docs"
DAEMON_TREE = "dagster (daemon, code server, run workers)"
DAEMON_ONLY = "memory: daemon + code server + forkserver"
RUN_WORKERS = "memory: run workers (incl. standby)"
DRIVER = "bench driver (producer, LLM server, sampler)"
MEMORY_ONLY = (DAEMON_ONLY, RUN_WORKERS)
# Questions the indexed corpus answers (the router's search query, the planner's sub-questions).
QUESTIONS = (
    "how long does a refund take after a double charge",
    "how do I reset my password when the reset email never arrives",
    "what is the policy for warranty claims on a broken router",
    "how does the request sensor avoid losing events",
    "what happens to a bad event on the requests topic",
    "how are LLM calls recorded and never paid twice",
    "where are large payloads stored",
    "how are API keys stored and rotated",
    "what is the per-tenant run limit",
    "how is a workflow spec compiled into ops",
    "which data is kept after an account is closed",
    "how do I export my dashboard data",
)


# --- pure pieces (tests/bench/test_shipped_bench.py) ---------------------------------------------


def per_minute(times: Iterable[float], start: float, end: float) -> list[int]:
    """How many of `times` fall in each 1-minute bucket [start + 60 i, start + 60 (i + 1)) up to `end`."""
    buckets = [0] * max(1, math.ceil((end - start) / 60))
    for t in times:
        i = math.floor((t - start) / 60)
        if 0 <= i < len(buckets):
            buckets[i] += 1
    return buckets


def rate_holds(buckets: Sequence[int], rate: float, load_minutes: float, tolerance: float = 0.9) -> bool:
    """Every full load minute after the first (the first when there is only one) finished at least
    `tolerance` x the offered rate: the first minute is short by one workflow's latency."""
    full = int(load_minutes)
    judged = list(buckets[1:full]) if full >= 2 else list(buckets[:1])
    return bool(judged) and all(n >= tolerance * rate for n in judged)


def cpu_per_workflow(resources: dict[str, Any], groups: Sequence[str], workflows: int) -> dict[str, float]:
    """CPU-seconds per workflow of each group and their total (`groups` partition the processes)."""
    out = {g: round(resources[g]["cpu_s"] / workflows, 3) for g in groups if g in resources}
    out["total"] = round(sum(resources[g]["cpu_s"] for g in groups if g in resources) / workflows, 3)
    return out


def memory_trend(samples: Sequence[dict[str, Any]], group: str, start: float, end: float) -> dict[str, Any]:
    """Mean memory (MiB) of the first and the last tenth of [start, end], and the change between them."""
    window = [s for s in samples if start <= s["at"] <= end]
    if not window:
        return {}
    tenth = max(1, len(window) // 10)
    first = [s["groups"][group]["mem_bytes"] / 2**20 for s in window[:tenth]]
    last = [s["groups"][group]["mem_bytes"] / 2**20 for s in window[-tenth:]]
    a, b = sum(first) / len(first), sum(last) / len(last)
    return {
        "first_mib": round(a, 1),
        "last_mib": round(b, 1),
        "change_pct": round(100 * (b - a) / a, 1) if a else None,
    }


def run_check(event_ids: Iterable[str], run_event_ids: Iterable[str]) -> dict[str, Any]:
    """Exactly one Dagster run per event: events without a run, and events with several."""
    wanted, runs = set(event_ids), Counter(run_event_ids)
    return {
        "runs": sum(n for e, n in runs.items() if e in wanted),
        "missing_run": sorted(e for e in wanted if runs[e] == 0),
        "duplicate_run": {e: n for e, n in sorted(runs.items()) if e in wanted and n > 1},
    }


# --- the workload ------------------------------------------------------------------------------


def _pick(text: str, n: int) -> list[str]:
    """n distinct QUESTIONS chosen by a digest of `text` (varied, yet the same for a replayed call)."""
    i = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
    return [QUESTIONS[(i + k) % len(QUESTIONS)] for k in range(n)]


def scripted_answer(body: dict[str, Any]) -> str | None:
    """A schema-valid answer for the request's agent; the router and planner point at the corpus."""
    schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("schema")
    if not schema:
        return None
    value = instance(schema)
    prompt = json.dumps(body.get("messages", [])[1:])
    if schema.get("title") == "Route":
        value.update(collection=SUPPORT_KB, search_query=_pick(prompt, 1)[0])
    elif schema.get("title") == "Plan":
        value["sub_questions"] = _pick(prompt, 2)
    return json.dumps(value)


class ShippedLLM(LLMTestServer):
    """The loopback LLM server: every call answered after `latency` s with `scripted_answer`."""

    def __init__(self, latency: float):
        super().__init__()
        self.latency = latency

    def _next_action(self, body: dict[str, Any]) -> Action:
        super()._next_action(body)  # records the request (no rules, no script)
        return Action("slow", delay_s=self.latency, content=scripted_answer(body))


class WorkflowSide(Side):
    """Events of one shipped workflow on the platform's request topic."""

    def __init__(self, workflow: str):
        super().__init__(workflow, names.TOPIC_REQUESTS, names.TAG_EVENT_ID, REPO / "workspace.yaml")
        self.workflow = workflow

    def event(self, event_id: str, tenant: str) -> dict[str, Any]:
        event = super().event(event_id, tenant)
        question = _pick(event_id, 1)[0]
        inputs = (
            {"topic": f"{question} ({event_id})"}
            if self.workflow == "research_report"
            else {
                "message": f"Ticket {event_id}: {question}? My invoice was charged twice.",
                "customer_tier": "pro",
            }
        )
        event.update(workflow=self.workflow, inputs=inputs)
        return event


@contextlib.contextmanager
def task_steps(task_ids: Sequence[str]) -> Iterator[None]:
    """run_timings takes the first STEP_START of a step named in e2e_bench.TASKS (the synthetic chain's
    task ids) as the first task: point it at this workflow's tasks while it reads their runs."""
    saved = e2e_bench.TASKS
    e2e_bench.TASKS = tuple(task_ids)  # type: ignore[assignment]
    try:
        yield
    finally:
        e2e_bench.TASKS = saved


class SplitSampler(ResourceSampler):
    """ResourceSampler whose daemon tree is also split, for memory, into run workers (forked from the
    warm launcher's forkserver) and the rest; their CPU is not split (a reaped worker's CPU lands on
    the forkserver that reaped it), so only DAEMON_TREE counts for CPU."""

    def _members(self, name: str, pid: int) -> list[psutil.Process]:
        procs = self._group(pid)
        if name not in MEMORY_ONLY:
            return procs
        workers = [p for p in procs if _is_run_worker(p)]
        return workers if name == RUN_WORKERS else [p for p in procs if p not in workers]


def _tree(pid: int) -> list[int]:
    try:
        root = psutil.Process(pid)
        return [pid, *(p.pid for p in root.children(recursive=True))]
    except psutil.Error:
        return []


def _is_run_worker(proc: psutil.Process) -> bool:
    """Forked from the forkserver (its children too); the forkserver itself is not."""
    try:
        return any("forkserver" in " ".join(p.cmdline()) for p in proc.parents())
    except psutil.Error:
        return False


# --- the corpus ------------------------------------------------------------------------------

PRODUCTS = (
    "Pro plan",
    "Team plan",
    "mobile app",
    "web dashboard",
    "public API",
    "X200 router",
    "invoice portal",
)
PROBLEMS = (
    "was charged twice for the same invoice",
    "never received the password reset email",
    "sees a 502 error when exporting the dashboard",
    "cannot log in after enabling two-factor authentication",
    "has a router that reboots every hour after the firmware upgrade",
    "was billed after cancelling the subscription",
    "reports that the API token expired earlier than its retention policy says",
    "wants a warranty replacement for a device that stopped charging",
)
ACTIONS = (
    "Refunded the duplicate charge; refunds reach the card within 5 to 10 business days.",
    "Resent the reset link and asked the customer to check the spam folder and the address on file.",
    "Escalated to engineering with the request id; a workaround is to export in smaller date ranges.",
    "Reset the second factor after verifying identity with the last four digits of the card.",
    "Rolled the firmware back to the previous stable version and opened a defect.",
    "Issued a prorated credit and confirmed the cancellation date in writing.",
    "Explained that tokens expire after 90 days of inactivity and issued a new one.",
    "Approved the warranty claim: the device is within 24 months of purchase; sent a shipping label.",
)
TAGS = ("billing", "login", "hardware", "api", "export", "refund")
POLICIES = {
    "refunds": "Refunds are issued to the original payment method. A duplicate charge is refunded in full "
    "without a request from the customer. Refunds reach the card within 5 to 10 business days.",
    "passwords": "Agents never ask for a password. A reset link expires after 30 minutes. Accounts with two-"
    "factor authentication are reset only after identity verification.",
    "warranty": "Hardware is covered for 24 months from purchase. A claim needs the serial number and the "
    "order id. Devices damaged by water are not covered.",
    "data-retention": "Closed accounts are deleted after 30 days; invoices are kept for 10 years as the law "
    "requires. API tokens expire after 90 days without use.",
    "escalation": "Outages and security reports go to engineering within one hour. Billing disputes over 500 "
    "EUR go to the billing lead. Agents do not promise timelines engineering has not confirmed.",
}


def write_corpus(folder: Path, target_chunks: int, seed: int = 16) -> dict[str, Any]:
    """The repo's README and docs/, then generated ticket logs and policy pages until the platform's
    chunker (200 tokens, 40 overlap: the rag assets' defaults) makes `target_chunks` chunks."""
    from agentflow_dagster.rag.chunking import Chunker

    chunker = Chunker()
    folder.mkdir(parents=True, exist_ok=True)
    chunks, files = 0, 0

    def add(name: str, text: str) -> None:
        nonlocal chunks, files
        (folder / name).write_text(text)
        chunks += len(chunker.split("count", name, text))
        files += 1

    for path in sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")]):
        add(f"docs-{path.name}", path.read_text())
    rng = random.Random(seed)
    n = 0
    while chunks < target_chunks:
        if n % 5 == 4:
            topic = rng.choice(sorted(POLICIES))
            sections = [f"## {topic} {k}\n\n{POLICIES[topic]} {rng.choice(ACTIONS)}" for k in range(6)]
            add(f"policy-{n:04d}.md", f"# Policy: {topic} (revision {n})\n\n" + "\n\n".join(sections))
        else:
            tickets = []
            for k in range(12):
                p = rng.randrange(len(PROBLEMS))
                tickets.append(
                    f"Ticket {n}-{k} ({rng.choice(('low', 'medium', 'high'))} urgency): a customer on the "
                    f"{rng.choice(PRODUCTS)} {PROBLEMS[p]}. Resolution: {ACTIONS[p]} Tags: "
                    f"{', '.join(rng.sample(TAGS, 2))}."
                )
            add(f"tickets-{n:04d}.txt", "\n\n".join(tickets))
        n += 1
    return {"files": files, "chunks_by_chunker": chunks}


def index_corpus(
    stack: BenchStack, folder: Path, collections: Sequence[str], timeout: float
) -> dict[str, Any]:
    """`agentflow ingest --wait` per collection (the daemon's document sensor and RAG assets index it)."""
    from agentflow_dagster.rag.pgvector_store import PgVectorStore

    out: dict[str, Any] = {}
    for collection in collections:
        t0 = time.monotonic()
        cmd = [sys.executable, "-m", "agentflow_dagster", "ingest", str(folder), "-c", collection]
        subprocess.run(
            [*cmd, "--wait", "--timeout", str(timeout)], check=True, cwd=REPO, env=dict(os.environ)
        )
        out[collection] = {"ingest_wait_s": round(time.monotonic() - t0, 1)}
    store = PgVectorStore(stack.pg_url)
    try:
        for collection in collections:
            out[collection]["chunks_in_index"] = store.count(collection)
    finally:
        store.close()
    return out


def model_loaded_outside_service(data_dir: Path) -> list[str]:
    """Logs that show a process loading the model itself (LocalEmbedder's fallback warning)."""
    found = []
    for path in data_dir.rglob("*"):
        if not (path.is_file() and path.suffix in (".log", ".err", ".out") and path.stat().st_size < 2**26):
            continue
        if b"in this process (seconds of CPU" in path.read_bytes():
            found.append(str(path))
    return found


# --- one step ------------------------------------------------------------------------------------


def run_step(
    ctx: dict[str, Any], workflow: str, rate: float, minutes: float, args: argparse.Namespace
) -> dict[str, Any]:
    """Events of `workflow` at `rate`/min for `minutes`, drained; what the module docstring lists."""
    stack, sampler, llm = ctx["stack"], ctx["sampler"], ctx["llm"]
    side, spec = WorkflowSide(workflow), ctx["specs"][workflow]
    prefix = f"{workflow.replace('_', '-')}-{int(rate)}pm-{uuid.uuid4().hex[:6]}"
    print(f"{workflow}: {rate}/min for {minutes} min", flush=True)
    before, calls_before, start = db_size(stack.pg_url), llm.count(), time.time()
    produced = produce_steady(ctx["producer"], side, prefix, rate, minutes, args.tenants)
    sent, load_end = produced["sent"], time.time()
    results = read_results(stack.kafka, set(sent), args.drain_timeout)
    with task_steps(spec.task_ids):
        timings = run_timings(ctx["instance"], side, sent, 120)
    drained = time.time()
    time.sleep(2 * args.sample_interval)  # a sample after the drain
    after = db_size(stack.pg_url)
    rows = history_rows(stack.pg_url, sorted(sent))
    check = count_check(list(sent), [e for e, _, _ in results], [e for e, _ in rows])
    check.update(run_check(sent, [r["event_id"] for r in timings]))
    check["ok"] = check["ok"] and not check["missing_run"] and not check["duplicate_run"]
    # A doubled event's runs by status (Dagster's run retry starts a second run after a failed one).
    check["duplicate_run_statuses"] = {
        e: sorted(r["status"] for r in timings if r["event_id"] == e) for e in check["duplicate_run"]
    }
    resources = sampler.report(start, drained)
    cpu_groups = [g for g in sampler.roots if g not in MEMORY_ONLY]
    finishes = [r["finished_at"] for r in timings if r["status"] == "SUCCESS" and r["finished_at"]]
    first = min(sent.values())
    buckets = per_minute(finishes, first, max([drained, *finishes]))
    return {
        "workflow": workflow,
        "rate_per_min": rate,
        "minutes": minutes,
        "window": {"start": start, "load_end": load_end, "drained": drained},
        "analysis": analyse(sent, timings, results),
        "finished_per_minute": buckets,
        "rate_holds": rate_holds(buckets, rate, minutes),
        "max_send_lag_s": round(max(produced["send_lag_s"]), 3),
        "count_check": check,
        "run_statuses": dict(Counter(r["status"] for r in timings)),
        "result_statuses": dict(Counter(s for _, s, _ in results)),
        "history_statuses": dict(Counter(s for _, s in rows)),
        "llm_calls_per_workflow": round((llm.count() - calls_before) / len(sent), 2),
        "cpu_s_per_workflow": cpu_per_workflow(resources, cpu_groups, len(sent)),
        "resources_load_and_drain": resources,
        "resources_load_only": sampler.report(start, load_end),
        "memory_trend": {g: memory_trend(sampler.samples, g, start, drained) for g in sampler.roots},
        "db": {
            "before_mib": round(before / 2**20, 1),
            "after_mib": round(after / 2**20, 1),
            "bytes_per_workflow": (after - before) // len(sent),
        },
        "sent": sent,
        "timings": timings,
    }


# --- report ----------------------------------------------------------------------------------------


def report(data: dict[str, Any]) -> str:
    """The Markdown page."""
    m = data["machine"]
    lines = [
        "# Shipped workflows under sustained load" + (f" ({data['label']})" if data["label"] else ""),
        "",
        f"{m['host']} · {m['at']} · load at start {m['loadavg_at_start']} · {m['note']} · load at the end "
        f"{data.get('loadavg_at_end')}",
        "",
        f"`{data['command']}`",
        "",
        *(
            [f"**Interrupted** ({data['interrupted']}): only the steps below finished.", ""]
            if data.get("interrupted")
            else []
        ),
        f"LLM: loopback server, {data['latency_s']} s per call, schema-valid answers. Stack: BenchStack "
        "(Postgres, Redis, SeaweedFS, Tansu), the embedding service, the platform daemon on the repo's "
        f"workspace.yaml and dagster.yaml; {data['tenants']} tenants. Index (built before the timed part "
        f"with `agentflow ingest --wait`): {data['corpus']['files']} files, "
        + ", ".join(
            f"`{c}` {v['chunks_in_index']} chunks in {v['ingest_wait_s']} s" for c, v in data["index"].items()
        )
        + ".",
        "",
        "## Per step (latencies in seconds after the event's submitted_at)",
    ]
    rows = []
    for s in data["steps"]:
        a, c = s["analysis"], s["count_check"]
        rows.append(
            [s["workflow"], s["rate_per_min"], s["minutes"], a["produced"], a["produced_per_min"],
             a["finished_per_min_during_load"], "yes" if s["rate_holds"] else "**no**",
             a["first_task_s"]["p50"], a["first_task_s"]["p99"],
             a["finished_s"]["p50"], a["finished_s"]["p99"],
             a["result_published_s"]["p50"], a["result_published_s"]["p99"],
             s["cpu_s_per_workflow"]["total"], s["llm_calls_per_workflow"], "OK" if c["ok"] else "**FAILED**"]
        )  # fmt: skip
    lines.append(
        md_table(
            [
                "workflow",
                "offered /min",
                "min",
                "produced",
                "produced /min",
                "finished /min (load)",
                "rate held",
                "first task p50",
                "p99",
                "finished p50",
                "p99",
                "result p50",
                "p99",
                "CPU s / workflow",
                "LLM calls / wf",
                "counts",
            ],
            rows,
        )  # fmt: skip
    )
    lines += ["", "## CPU-seconds per workflow by process group (load + drain)"]
    groups = [g for g in data["process_groups"] if g not in MEMORY_ONLY]
    lines.append(
        md_table(
            ["workflow", "offered /min", *groups, "total"],
            [
                [
                    s["workflow"],
                    s["rate_per_min"],
                    *(s["cpu_s_per_workflow"].get(g) for g in groups),
                    s["cpu_s_per_workflow"]["total"],
                ]
                for s in data["steps"]
            ],
        )  # fmt: skip
    )
    lines += ["", "## Finished per 1-minute bucket (from the step's first event; drain included)"]
    lines.append(
        md_table(
            ["workflow", "offered /min", "finished per minute", "drain after last event s"],
            [
                [
                    s["workflow"],
                    s["rate_per_min"],
                    " ".join(map(str, s["finished_per_minute"])),
                    s["analysis"]["drain_after_last_event_s"],
                ]
                for s in data["steps"]
            ],
        )  # fmt: skip
    )
    lines += ["", "## Memory (PSS MiB): first tenth -> last tenth of each step, and Postgres growth"]
    mem_rows = []
    for s in data["steps"]:
        trend = s["memory_trend"]
        mem_rows.append(
            [s["workflow"], s["rate_per_min"],
             *(f"{trend[g].get('first_mib')} -> {trend[g].get('last_mib')}" for g in data["process_groups"]),
             s["db"]["bytes_per_workflow"]]
        )  # fmt: skip
    lines.append(
        md_table(["workflow", "offered /min", *data["process_groups"], "Postgres bytes / wf"], mem_rows)
    )
    lines += ["", "## Exact counts", ""]
    for s in data["steps"]:
        c = s["count_check"]
        problems = ", ".join(
            f"{k.replace('_', ' ')} {c[k]}"
            for k in ("missing_run", "duplicate_run", "missing_result", "duplicate_result",
                      "duplicate_run_statuses", "missing_history_row", "duplicate_history_row",
                      "duplicate_event_ids_produced")
            if c[k]
        )  # fmt: skip
        lines.append(
            f"- {s['workflow']} at {s['rate_per_min']}/min: {c['events']} events, {c['runs']} runs, "
            f"{c['results']} result events, {c['history_rows']} `workflow_runs` rows: "
            f"**{'OK' if c['ok'] else 'FAILED'}** ({problems or 'nothing missing or doubled'}); "
            f"runs {s['run_statuses']}, rows {s['history_statuses']}"
        )
    w = data["warmup_check"]
    lines += [
        f"- warm-up (one event per workflow, not in the steps): {'OK' if w['ok'] else 'FAILED'}",
        f"- processes that loaded the embedding model themselves (fallback warning in a log): "
        f"{data['model_loaded_outside_service'] or 'none'}",
        f"- left running after teardown: {data['teardown_leftovers'] or 'nothing'}",
        "",
        "CPU: own + reaped children's user+system time of each group's processes (psutil, every "
        f"{data['sample_interval_s']} s), from the step's first event to its last result; the daemon tree "
        "includes every run worker. The driver also runs the sampler. Memory: PSS, the daemon tree also "
        "split into its long-lived processes and the run workers (forked from the forkserver).",
    ]
    return "\n".join(lines)


def plot(data: dict[str, Any], name: str) -> None:
    """Latency distributions (log), finished per minute, memory over time, CPU per workflow."""
    from common import plot_path

    plt = pyplot()
    steps = data["steps"]
    t0 = min(s["window"]["start"] for s in steps)
    fig, ((ax1, ax2), (ax3, ax4)) = plt.subplots(2, 2, figsize=(15, 9))
    series, labels = [], []
    for s in steps:
        ok = [r for r in s["timings"] if r["finished_s"] is not None]
        for key, short in (("first_task_s", "first task"), ("finished_s", "finished")):
            series.append([r[key] for r in ok if r[key] is not None] or [float("nan")])
            labels.append(f"{s['workflow']}\n{s['rate_per_min']:g}/min {short}")
    ax1.boxplot(series, tick_labels=labels, showfliers=True)
    ax1.set_yscale("log")
    ax1.set_ylabel("seconds after the event (log scale)")
    ax1.set_title("Latency per step")
    ax1.tick_params(axis="x", labelsize=7, rotation=30)
    for s in steps:
        x0 = (min(s["sent"].values()) - t0) / 60
        xs = [x0 + i + 0.5 for i in range(len(s["finished_per_minute"]))]
        ax2.plot(xs, s["finished_per_minute"], marker="o", label=f"{s['workflow']} {s['rate_per_min']:g}/min")
        ax2.hlines(s["rate_per_min"], x0, x0 + s["minutes"], linestyles="dashed", colors="grey")
    ax2.set_xlabel("minutes since the first timed event")
    ax2.set_ylabel("workflows finished per minute (dashed: offered)")
    ax2.set_title("Finished rate per 1-minute bucket")
    ax2.set_ylim(bottom=0)
    ax2.legend(fontsize=7)
    samples = data["samples"]
    for g in data["process_groups"]:
        if g == DAEMON_TREE:
            continue  # shown split in its two memory groups
        ax3.plot(
            [(x["at"] - t0) / 60 for x in samples],
            [x["groups"][g]["mem_bytes"] / 2**20 for x in samples],
            label=g,
            linewidth=1,
        )
    ax3.set_xlabel("minutes since the first timed event")
    ax3.set_ylabel("memory, PSS MiB")
    ax3.set_title("Memory over time")
    ax3.set_ylim(bottom=0)
    ax3.legend(fontsize=7)
    groups = [g for g in data["process_groups"] if g not in MEMORY_ONLY]
    bottom = [0.0] * len(steps)
    ticks = [f"{s['workflow']}\n{s['rate_per_min']:g}/min" for s in steps]
    for g in groups:
        vals = [s["cpu_s_per_workflow"].get(g, 0.0) for s in steps]
        ax4.bar(ticks, vals, bottom=bottom, label=g)
        bottom = [a + b for a, b in zip(bottom, vals, strict=True)]
    ax4.set_ylabel("CPU-seconds per workflow")
    ax4.set_title("CPU per workflow, all processes")
    ax4.tick_params(axis="x", labelsize=7)
    ax4.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(plot_path(name), dpi=110)
    plt.close(fig)


# --- main ------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", default="support_triage,research_report")
    parser.add_argument("--rates", default="30,60,120", help="events per minute, one step each")
    parser.add_argument("--minutes", type=float, default=5.0, help="how long each step produces events")
    parser.add_argument("--soak", action="store_true", help="support_triage at 60/min for 30 min, label soak")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per LLM call")
    parser.add_argument("--chunks", type=int, default=2500, help="chunks in each indexed collection")
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--drain-timeout", type=float, default=1800)
    parser.add_argument("--index-timeout", type=float, default=3600)
    parser.add_argument("--sample-interval", type=float, default=2.0)
    parser.add_argument("--label", default="")
    args = parser.parse_args(argv)
    if args.soak:
        args.workflows, args.rates, args.minutes = "support_triage", "60", 30.0
        args.label = args.label or "soak"
    return args


def main() -> None:
    args = parse_args()
    exit_on_sigterm()
    from dagster import DagsterInstance
    from kafka import KafkaProducer

    from agentflow_dagster.workflows.loader import load_specs

    workflows = args.workflows.split(",")
    rates = [float(r) for r in args.rates.split(",")]
    specs = load_specs()
    data: dict[str, Any] = {
        "machine": machine(),
        "command": "python bench/shipped_bench.py " + " ".join(sys.argv[1:]),
        "label": args.label,
        "latency_s": args.latency,
        "tenants": args.tenants,
        "sample_interval_s": args.sample_interval,
        "steps": [],
    }
    tmp = Path(tempfile.mkdtemp(prefix="agentflow-shipped-"))
    llm = ShippedLLM(args.latency).start()
    stack = BenchStack(tmp / "af")
    daemon, sampler, producer = 0, None, None
    try:
        stack.start({"OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "bench-key"})
        stack.start_embeddings()
        stack.write_homes(preload="")  # the daemon serves the repo's location, preloaded by dagster.yaml
        instance = DagsterInstance.get()
        daemon = stack.start_daemon(REPO / "workspace.yaml", "daemon_shipped", platform=True)
        print(f"indexing about {args.chunks} chunks into {SUPPORT_KB} and {RESEARCH_DOCS}", flush=True)
        data["corpus"] = write_corpus(tmp / "corpus", args.chunks)
        data["index"] = index_corpus(stack, tmp / "corpus", [SUPPORT_KB, RESEARCH_DOCS], args.index_timeout)
        producer = KafkaProducer(bootstrap_servers=stack.kafka, acks="all", linger_ms=5)
        warm: dict[str, float] = {}
        for workflow in workflows:
            print(f"warm-up: {workflow}", flush=True)
            side = WorkflowSide(workflow)
            sent = publish(
                producer,
                side,
                [side.event(f"warm-{workflow.replace('_', '-')}-{uuid.uuid4().hex[:6]}", "t0")],
            )
            with task_steps(specs[workflow].task_ids):
                runs = run_timings(instance, side, sent, 600)
            warm.update(sent)
            data.setdefault("warmup", []).extend(runs)
        rows = history_rows(stack.pg_url, sorted(warm))
        results = read_results(stack.kafka, set(warm), 120)
        data["warmup_check"] = count_check(list(warm), [e for e, _, _ in results], [e for e, _ in rows])
        roots = {
            DAEMON_TREE: daemon,
            DAEMON_ONLY: daemon,
            RUN_WORKERS: daemon,
            **stack.servers,
            DRIVER: os.getpid(),
        }
        data["process_groups"] = list(roots)
        sampler = SplitSampler(roots, args.sample_interval).start()
        ctx = {"stack": stack, "sampler": sampler, "llm": llm, "producer": producer, "instance": instance}
        ctx["specs"] = specs
        for workflow in workflows:
            for rate in rates:
                data["steps"].append(run_step(ctx, workflow, rate, args.minutes, args))
    except BaseException as exc:  # a SIGTERM, a timeout, a failure: the steps done so far are still written
        data["interrupted"] = f"{type(exc).__name__}: {exc}"
        if not data["steps"]:
            raise
    finally:
        data["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        if sampler is not None:
            sampler.stop()
            data["samples"] = sampler.samples
        if producer is not None:
            producer.close(timeout=5)
        tree = _tree(daemon) if daemon else []
        if daemon:
            stack.stop_daemon(daemon)
        data["teardown_leftovers"] = [*leftover_processes(tree, []), *stack.stop()]
        llm.stop()
    data["model_loaded_outside_service"] = model_loaded_outside_service(tmp)
    finish("shipped_bench", args.label, data, report(data), plot)
    ok = all(s["count_check"]["ok"] for s in data["steps"]) and data["warmup_check"]["ok"]
    if (
        not ok
        or data.get("interrupted")
        or data["teardown_leftovers"]
        or data["model_loaded_outside_service"]
    ):
        raise SystemExit(f"count check failed, processes left running or a model loaded per run; logs: {tmp}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
