"""Exact CPU-seconds of a system under test: a cgroup (v1 `cpuacct`) holding all its processes.

Sampling processes with psutil misses short-lived children and counts a reaped child once in its
parent's `children_*` times and, if it was seen alive, once more in its own: sums over a changing
process tree can even go negative (LangGraph came out at -0.035 CPU-s per workflow that way). A
cgroup counts every process that was ever in it, including run workers that lived a second, and a
child inherits its parent's group at fork. Servers that daemonise away from the tree (the embedded
Postgres's postmaster is reparented to init) are moved in by pid, with the backends they already have;
backends forked later inherit the group.

    group = CpuGroup.create("peer-langgraph")    # None where cgroups cannot be written (not root)
    proc = subprocess.Popen(cmd, preexec_fn=group.join_in_child)
    group.adopt(pids_of_postgres)
    used = group.usage_s()                       # cumulative CPU-seconds of the group
    group.remove()
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path

import psutil

ROOT = Path("/sys/fs/cgroup/cpuacct")


class CpuGroup:
    """One cpuacct cgroup; `usage_s` is the CPU time of every task that ran in it while a member."""

    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def create(cls, name: str) -> CpuGroup | None:
        """A new group under the cpuacct hierarchy, or None when it is absent or not writable."""
        path = ROOT / f"agentflow-bench-{name}-{uuid.uuid4().hex[:6]}"
        try:
            path.mkdir()
            (path / "cpuacct.usage").read_text()
        except OSError:
            return None
        return cls(path)

    def join_in_child(self) -> None:
        """`preexec_fn` of a Popen: the child enters the group before it execs (no race with its forks)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def adopt(self, pids: list[int]) -> int:
        """Move running processes (and their threads) into the group; returns how many moved."""
        moved = 0
        for pid in pids:
            try:
                (self.path / "cgroup.procs").write_text(str(pid))
                moved += 1
            except OSError:
                continue  # exited meanwhile
        return moved

    def adopt_matching(self, marker: str) -> int:
        """Adopt the processes whose command line contains `marker` and are not in the group yet."""
        members = set(self.pids())
        found = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if proc.info["pid"] not in members and marker in " ".join(proc.info["cmdline"] or []):
                found.append(proc.info["pid"])
        return self.adopt(found)

    def pids(self) -> list[int]:
        try:
            return [int(x) for x in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def usage_s(self) -> float:
        return int((self.path / "cpuacct.usage").read_text()) / 1e9

    def remove(self) -> None:
        """Move what is left back to the root group and delete this one (bounded)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for pid in self.pids():
                with contextlib.suppress(OSError):
                    (ROOT / "cgroup.procs").write_text(str(pid))
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.2)


def self_cpu_s(pid: int) -> float:
    """A process's own user+system CPU-seconds (not its children's); 0 when it is gone."""
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return t.user + t.system
