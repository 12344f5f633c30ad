"""What an idle stack costs: CPU-seconds per minute of the platform's daemon tree and its servers.

    python bench/idle_bench.py [--minutes 3] [--refresh 60,3600] [--label NAME]

With no events at all, the daemon still ticks its sensors (request sensor every second with a long
poll, run-status sensors every 2 s, approvals every 5 s), dequeues, heartbeats and, in stock Dagster,
replaces its code server every 60 s. That cost is paid whatever the traffic: at R workflows a minute
it adds (idle CPU-s per minute) / R to each workflow. One throwaway stack (BenchStack: Postgres,
Redis, SeaweedFS, Tansu) and, for each `--refresh` value (AGENTFLOW_WORKSPACE_REFRESH_SECONDS), a
fresh platform daemon serving the benchmark code location: after a 60 s settle, CPU over `--minutes`
from cgroups (bench/cpuacct.py): the daemon's tree (daemon, code server, forkserver, standby workers)
and the servers (Postgres and its backends, Redis, Tansu, SeaweedFS), and how many code-server
processes the daemon started. Writes bench/results/idle_bench[_LABEL].{json,md,png}.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from common import BENCH, BenchStack, exit_on_sigterm, finish, machine, md_table, pyplot
from cpuacct import CpuGroup

SETTLE_S = 60


def code_servers(root: int) -> set[int]:
    """Pids of the `dagster api grpc` processes under the daemon."""
    try:
        tree = psutil.Process(root).children(recursive=True)
    except psutil.Error:
        return set()
    found = set()
    for proc in tree:
        try:
            if "api grpc" in " ".join(proc.cmdline()):
                found.add(proc.pid)
        except psutil.Error:
            continue
    return found


def measure(stack: BenchStack, servers: CpuGroup, refresh: int, minutes: float) -> dict[str, Any]:
    env = {"AGENTFLOW_WORKSPACE_REFRESH_SECONDS": str(refresh)}
    pid = stack.start_daemon(BENCH / "workspace_platform.yaml", f"daemon_idle_{refresh}", env, platform=True)
    group = CpuGroup.create(f"idle-{refresh}")
    if group is None:
        stack.stop_daemon(pid)
        raise SystemExit("no writable cpuacct cgroup (/sys/fs/cgroup/cpuacct): run as root on Linux")
    group.adopt([pid])
    marker = str(stack.data_dir)
    try:
        time.sleep(SETTLE_S)
        seen: set[int] = set()
        servers.adopt(stack.pids)  # Redis and Tansu (no data dir on their command line), ...
        servers.adopt_matching(marker)  # ... the daemonised postmaster and SeaweedFS
        d0, s0, t0 = group.usage_s(), servers.usage_s(), time.time()
        series = []
        while time.time() - t0 < minutes * 60:
            time.sleep(5)
            seen |= code_servers(pid)
            servers.adopt_matching(marker)
            series.append((time.time() - t0, group.usage_s() - d0, servers.usage_s() - s0))
        span = time.time() - t0
        daemon_cpu, server_cpu = group.usage_s() - d0, servers.usage_s() - s0
    finally:
        stack.stop_daemon(pid)
        group.remove()
    return {
        "refresh_s": refresh,
        "minutes": round(span / 60, 2),
        "daemon_tree_cpu_s_per_min": round(60 * daemon_cpu / span, 2),
        "servers_cpu_s_per_min": round(60 * server_cpu / span, 2),
        "total_cpu_s_per_min": round(60 * (daemon_cpu + server_cpu) / span, 2),
        "code_server_processes_seen": len(seen),
        "series": series,
    }


def markdown(d: dict[str, Any]) -> str:
    m = d["machine"]
    rows = [
        [
            r["refresh_s"],
            r["minutes"],
            r["daemon_tree_cpu_s_per_min"],
            r["servers_cpu_s_per_min"],
            r["total_cpu_s_per_min"],
            round(r["total_cpu_s_per_min"] / 60, 3),
            r["code_server_processes_seen"],
        ]
        for r in d["runs"]
    ]
    return "\n".join(
        [
            "# Idle stack: CPU per minute with no events",
            "",
            f"{m['host']}, {m['at']}, load average at start {m['loadavg_at_start']} ({m['note']}).",
            f"Platform daemon on the benchmark code location, {SETTLE_S} s settle, then CPU from cgroups "
            "(daemon tree; servers = Postgres with backends, Redis, Tansu, SeaweedFS; the driver excluded).",
            "",
            md_table(
                [
                    "workspace refresh s",
                    "minutes",
                    "daemon tree CPU s/min",
                    "servers CPU s/min",
                    "total CPU s/min",
                    "cores",
                    "code servers seen",
                ],
                rows,
            ),
        ]
    )


def plot(d: dict[str, Any], name: str) -> None:
    from common import plot_path

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in d["runs"]:
        xs = [x for x, _, _ in r["series"]]
        ax.plot(xs, [a + b for _, a, b in r["series"]], label=f"refresh {r['refresh_s']} s")
    ax.set_xlabel("seconds (idle)")
    ax.set_ylabel("CPU-seconds used (daemon tree + servers)")
    ax.set_title("Idle stack: cumulative CPU")
    ax.legend()
    fig.tight_layout()
    fig.savefig(plot_path(name), dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--refresh", default="60,3600", help="AGENTFLOW_WORKSPACE_REFRESH_SECONDS values")
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    exit_on_sigterm()
    data: dict[str, Any] = {"machine": machine(), "runs": []}
    tmp = Path(tempfile.mkdtemp(prefix="agentflow-idle-"))
    stack = BenchStack(tmp / "af")
    servers = CpuGroup.create("idle-servers")
    if servers is None:
        raise SystemExit("no writable cpuacct cgroup (/sys/fs/cgroup/cpuacct): run as root on Linux")
    try:
        stack.start()
        stack.write_homes()
        for refresh in (int(x) for x in args.refresh.split(",")):
            print(f"refresh {refresh} s: settle {SETTLE_S} s, then {args.minutes} min idle", flush=True)
            data["runs"].append(measure(stack, servers, refresh, args.minutes))
    finally:
        stack.stop()
        servers.remove()
    finish("idle_bench", args.label, data, markdown(data), plot)


if __name__ == "__main__":
    main()
