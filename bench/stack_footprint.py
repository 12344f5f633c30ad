"""Start-up time and memory of the whole `agentflow up` stack, per component.

    python bench/stack_footprint.py [--repo PATH] [--label L] [--settle 20]

Runs `agentflow up` on a fresh data directory and free ports, waits `--settle` seconds, sums the
resident memory (RSS and PSS) of every process the stack recorded in stack.json with its children,
then times `agentflow down`. `--repo` runs another checkout of the project (e.g. a `git worktree` of an
earlier commit) with this venv: that is how the before/after figures in docs/performance.md were taken.
Writes bench/results/stack_footprint_<label>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from common import REPO, machine, md_table, write_results

from agentflow_dagster.stack.services import free_port, free_seaweed_port


def memory(pid: int) -> tuple[float, float]:
    """RSS and PSS in MiB of a process and its descendants."""
    rss = pss = 0.0
    try:
        proc = psutil.Process(pid)
        family = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0.0, 0.0
    for p in family:
        try:
            info = p.memory_full_info()
        except psutil.Error:
            continue
        rss += info.rss / 2**20
        pss += getattr(info, "pss", info.rss) / 2**20
    return round(rss, 1), round(pss, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=REPO)
    parser.add_argument("--label", default="after")
    parser.add_argument("--settle", type=float, default=20)
    args = parser.parse_args()
    repo = args.repo.resolve()
    with tempfile.TemporaryDirectory(prefix="footprint-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTFLOW_", "OPENAI_"))}
        env.update(
            PYTHONPATH=str(repo),
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            AGENTFLOW_DATA_DIR=str(Path(tmp) / "af"),
            AGENTFLOW_S3_PORT=str(free_seaweed_port()),
            **{f"AGENTFLOW_{k}_PORT": str(free_port()) for k in ("POSTGRES", "REDIS", "KAFKA", "WEBSERVER")},
            AGENTFLOW_METRICS_PORT=str(free_port()),
        )
        cli = [sys.executable, "-m", "agentflow_dagster"]
        started = time.perf_counter()
        up = subprocess.run([*cli, "up"], env=env, cwd=repo, capture_output=True, text=True, timeout=900)
        up_s = time.perf_counter() - started
        try:
            if up.returncode != 0:
                raise SystemExit(f"agentflow up failed:\n{up.stdout}\n{up.stderr}")
            time.sleep(args.settle)
            state = json.loads((Path(tmp) / "af" / "stack.json").read_text())["services"]
            components: dict[str, Any] = {}
            for name, rec in state.items():
                if rec.get("managed"):
                    rss, pss = memory(int(rec["pid"]))
                    components[name] = {"rss_mib": rss, "pss_mib": pss}
        finally:
            started = time.perf_counter()
            subprocess.run([*cli, "down"], env=env, cwd=repo, capture_output=True, timeout=300)
            down_s = time.perf_counter() - started
    total_rss = round(sum(c["rss_mib"] for c in components.values()), 1)
    total_pss = round(sum(c["pss_mib"] for c in components.values()), 1)
    data = {
        "machine": machine(),
        "repo": str(repo),
        "up_seconds": round(up_s, 1),
        "down_seconds": round(down_s, 1),
        "components": components,
        "total_rss_mib": total_rss,
        "total_pss_mib": total_pss,
    }
    rows = [[n, c["rss_mib"], c["pss_mib"]] for n, c in components.items()]
    rows.append(["**total**", total_rss, total_pss])
    md = (
        f"# Stack footprint ({args.label})\n\n{data['machine']['host']}, {data['machine']['at']}, load "
        f"{data['machine']['loadavg_at_start']}.\n\n`agentflow up` {data['up_seconds']} s (fresh data "
        f"directory), `agentflow down` {data['down_seconds']} s; memory {args.settle:.0f} s after up:\n\n"
        + md_table(["component", "RSS MiB", "PSS MiB"], rows)
    )
    write_results(f"stack_footprint_{args.label}", data, md)
    print(md)


if __name__ == "__main__":
    main()
