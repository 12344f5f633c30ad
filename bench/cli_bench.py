"""CLI latency: wall and CPU time of `agentflow status|submit|search|trace|audit` against a live stack.

    python bench/cli_bench.py [--repeat 5] [--data-dir DIR]

Without --data-dir a real `agentflow up` stack is started on free loopback ports (embedding service
included) and stopped by `agentflow down` at the end; with --data-dir DIR the stack already running
there (its AGENTFLOW_* ports from this environment) is used and left running. Either way docs/ is
ingested into the collection `docs` and one `support_triage` workflow is run to the end (offline LLM
provider), so that search, trace and audit have something real to read. Each command is a fresh interpreter
(`python -m agentflow_dagster ...`), as a user's shell runs it. Targets (issue 16): search < 1 s,
trace / audit / status < 1.5 s. Writes bench/results/cli_bench.{json,md,png}.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, finish, machine, md_table, plot_path, pyplot, summary  # noqa: E402
from tests.support.live_stack import LiveStack  # noqa: E402

TARGETS_S = {"search": 1.0, "trace": 1.5, "audit": 1.5, "status": 1.5}
MESSAGE = "My invoice was charged twice this month; please refund the duplicate payment."


def timed(stack: LiveStack, *args: str) -> tuple[float, float, str]:
    """(wall s, CPU s of the child, stdout) of one `agentflow` command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = stack.cli(*args, timeout=600)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if out.returncode not in (0, 1):  # status exits 1 when a component is down: still a timing
        raise RuntimeError(f"agentflow {' '.join(args)} failed: {out.stderr[-1500:]}")
    return wall, cpu, out.stdout


def prepare(stack: LiveStack) -> str:
    """Index docs/ and run one support_triage to the end; returns its plan id."""
    done = stack.cli("ingest", str(REPO / "docs"), "-c", "docs", "--wait", "--timeout", "900", timeout=960)
    if done.returncode:
        raise RuntimeError(f"ingest failed: {done.stdout[-800:]} {done.stderr[-1500:]}")
    run = stack.cli("submit", "support_triage", "--input", f"message={MESSAGE}", "--wait", "--timeout", "600")
    found = re.search(r"plan_id=(plan-[0-9a-f]{20})", run.stdout)
    if run.returncode or not found:
        raise RuntimeError(f"submit --wait failed: {run.stdout[-800:]} {run.stderr[-1500:]}")
    return found.group(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--label", default="")
    parser.add_argument("--data-dir", type=Path, default=None, help="use the stack running there")
    args = parser.parse_args()
    if args.data_dir:
        env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
        stack = LiveStack(args.data_dir, {}, env | {"AGENTFLOW_DATA_DIR": str(args.data_dir.resolve())})
    else:
        stack = LiveStack.create(Path(tempfile.mkdtemp(prefix="cli-bench-")) / "af")
    data: dict[str, Any] = {"machine": machine(), "repeat": args.repeat, "own_stack": not args.data_dir}
    try:
        t0 = time.perf_counter()
        if not args.data_dir:
            stack.up()
        data["up_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        plan = prepare(stack)
        data["prepare_s"] = round(time.perf_counter() - t0, 1)
        commands = {
            "status": ["status"],
            "submit": ["submit", "support_triage", "--input", f"message={MESSAGE}"],
            "search": ["search", "how does the request sensor avoid losing events", "-c", "docs"],
            "trace": ["trace", plan],
            "audit": ["audit", plan],
        }
        samples: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in commands}
        outputs: dict[str, str] = {}
        for _ in range(args.repeat):  # interleaved, so load from other work hits every command alike
            for name, argv in commands.items():
                wall, cpu, stdout = timed(stack, *argv)
                samples[name]["wall"].append(wall)
                samples[name]["cpu"].append(cpu)
                outputs[name] = stdout
        data["commands"] = {
            k: {"wall_s": summary(v["wall"]), "cpu_s": summary(v["cpu"]), "samples_wall_s": v["wall"]}
            for k, v in samples.items()
        }
        data["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        data["status_output"] = outputs["status"]
        data["search_output_head"] = outputs["search"][:600]
    finally:
        if not args.data_dir:
            stack.down()
    finish("cli_bench", args.label, data, markdown(data), plot)


def markdown(d: dict[str, Any]) -> str:
    m = d["machine"]
    rows = []
    for name, c in d["commands"].items():
        target = TARGETS_S.get(name)
        met = "" if target is None else ("yes" if c["wall_s"]["p50"] < target else "no")
        rows.append([f"`agentflow {name}`", c["wall_s"]["p50"], c["wall_s"]["max"], c["cpu_s"]["p50"],
                     f"< {target}" if target else "", met])  # fmt: skip
    embed = next((line for line in d["status_output"].splitlines() if line.startswith("embeddings")), "")
    return "\n".join(
        [
            "# CLI latency against a live stack",
            "",
            f"{m['host']}, {m['at']}, load average at start {m['loadavg_at_start']} ({m['note']}), "
            f"at the end {d.get('loadavg_at_end')}.",
            (f"`agentflow up` {d['up_s']} s" if d.get("own_stack", True) else "a stack already up")
            + f"; ingest docs/ + one support_triage to the end {d['prepare_s']} s; "
            f"{d['repeat']} interleaved rounds, each command a fresh interpreter.",
            "",
            md_table(["command", "wall p50 s", "wall max s", "CPU p50 s", "target", "met"], rows),
            "",
            f"`agentflow status` embedding service line: `{' '.join(embed.split())}`",
        ]
    )


def plot(d: dict[str, Any], name: str) -> None:
    plt = pyplot()
    names = list(d["commands"])
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.boxplot([d["commands"][n]["samples_wall_s"] for n in names], tick_labels=names)
    for i, n in enumerate(names, start=1):
        if n in TARGETS_S:
            ax.hlines(TARGETS_S[n], i - 0.4, i + 0.4, colors="tab:red", linestyles="--")
    ax.set_yscale("log")
    ax.set_ylabel("wall seconds (log scale; red: target)")
    ax.set_title("agentflow CLI, fresh interpreter per call")
    fig.tight_layout()
    fig.savefig(plot_path(name), dpi=110)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
