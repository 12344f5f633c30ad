"""Summarise a py-spy raw profile of the platform daemon's process tree during benchmark 1.

    pip install py-spy   # a profiling tool, not a dependency of the platform
    python bench/e2e_bench.py --events 30 --skip-baseline &
    py-spy record --subprocesses --nonblocking --rate 50 --duration 90 --format raw -o prof.raw \\
        -p "$(pgrep -f 'agentflow_dagster.instance.daemon run')"
    python bench/profile_summary.py prof.raw [more.raw ...]

Prints, per profile, the busy samples (threads waiting in select/poll/sleep/recv are left out) by
process (the daemon, its code server, the forkserver, run workers forked from it) and the share of
each spent importing modules, then the run workers' heaviest functions (inclusive).
"""

from __future__ import annotations

import collections
import re
import sys

IDLE = re.compile(
    r"\(wait\b|select \(|poll \(selectors|_wait_for_tstate_lock|\bsleep\b|epoll|recv_into|accept \("
    r"|_recv \(|wait \(threading|poll \(multiprocessing|_poll \(multi"
)


def summarise(path: str, top: int = 25) -> str:
    by_process: collections.Counter[str] = collections.Counter()
    importing: collections.Counter[str] = collections.Counter()
    worker_fns: collections.Counter[str] = collections.Counter()
    with open(path) as fh:
        for line in fh:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not count.isdigit():
                continue  # a frame name py-spy wrote across lines
            n, frames = int(count), stack.split(";")
            if IDLE.search(frames[-1]):
                continue
            procs = [f for f in frames if f.startswith("process ")]
            if len(procs) >= 3:
                key = "run workers (forked from the forkserver)"
            elif len(procs) == 2:
                key = "code server" if "grpc" in procs[-1] else "forkserver"
            else:
                key = "daemon"
            by_process[key] += n
            if any("_find_and_load" in f for f in frames):
                importing[key] += n
            if key.startswith("run workers"):
                seen = set()
                for frame in frames:
                    fn = re.sub(r":\d+\)$", ")", frame)
                    if not frame.startswith("process") and fn not in seen:
                        seen.add(fn)
                        worker_fns[fn] += n
    total = sum(by_process.values())
    lines = [f"## {path}", "", f"busy samples: {total}", "", "| process | samples | share | importing |"]
    lines.append("|---|---|---|---|")
    for key, n in by_process.most_common():
        lines.append(f"| {key} | {n} | {100 * n / total:.0f} % | {100 * importing[key] / n:.0f} % |")
    lines += ["", "run workers, inclusive samples:", ""]
    skip = ("<module> (<string>)", "multiprocessing/", "main(", "threading.py")
    for fn, n in worker_fns.most_common(top * 3):
        if not any(s in fn for s in skip):
            lines.append(f"- {n} {fn[:140]}")
            top -= 1
            if top == 0:
                break
    return "\n".join(lines)


if __name__ == "__main__":
    print("\n\n".join(summarise(p) for p in sys.argv[1:]))
