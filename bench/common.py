"""Shared pieces of the benchmarks: a throwaway stack, percentiles, and JSON/Markdown/PNG output."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
# Benchmarks run as `python bench/<name>.py`: the repo root (for `tests.support`) goes on the path.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agentflow_dagster.stack import services  # noqa: E402


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, p50, p99, mean, max of a sample (seconds or ms, whatever the caller measured)."""
    return {
        "n": len(values),
        "p50": _round(percentile(values, 50)),
        "p99": _round(percentile(values, 99)),
        "mean": _round(sum(values) / len(values)) if values else None,
        "max": _round(max(values)) if values else None,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def machine() -> dict[str, Any]:
    """What the figures were taken on; the load average says how busy the machine was at the start."""
    load = os.getloadavg()
    return {
        "host": f"{platform.machine()} {os.cpu_count()} cpu, Python {platform.python_version()}",
        "at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_at_start": [round(x, 2) for x in load],
        "note": (
            "quiet machine at the start" if load[0] < 1.5 else "busy machine: other work ran at the start"
        ),
    }


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, data: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """bench/results/<name>.json and .md."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    js, md = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    js.write_text(json.dumps(data, indent=2, default=str) + "\n")
    md.write_text(markdown.rstrip() + "\n")
    return js, md


def finish(base: str, label: str, data: dict[str, Any], markdown: str, plot: Callable[..., None]) -> None:
    """Write <base>[_<label>].{json,md,png} and print the Markdown page."""
    name = base + (f"_{label}" if label else "")
    plot(data, name)
    js, md = write_results(name, data, markdown)
    print(md.read_text())
    print(f"wrote {js}, {md}, {plot_path(name)}")


def plot_path(name: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    return RESULTS / f"{name}.png"


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display on the bench machines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass
class BenchStack:
    """Postgres, Redis, SeaweedFS (S3) and Tansu on free loopback ports in one data dir; daemons on demand."""

    data_dir: Path
    ports: dict[str, int] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    # Server name -> pid of what this stack started (ResourceSampler roots; stop() stops each).
    servers: dict[str, int] = field(default_factory=dict)

    def start(self, extra_env: dict[str, str] | None = None) -> BenchStack:
        """Start the servers, migrate, create topics and buckets, write DAGSTER_HOME/dagster.yaml."""
        self.ports = {k: services.free_port() for k in ("postgres", "redis", "kafka", "webserver", "metrics")}
        self.ports["s3"] = services.free_seaweed_port()  # 4 ports from here, each + 10000 for gRPC
        os.environ.update(
            AGENTFLOW_DATA_DIR=str(self.data_dir),
            **{f"AGENTFLOW_{k.upper()}_PORT": str(v) for k, v in self.ports.items()},
        )
        external = ("POSTGRES_URL", "REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS", "S3_ENDPOINT", "S3_ACCESS_KEY")
        for var in (*(f"AGENTFLOW_{v}" for v in external), "AGENTFLOW_S3_SECRET_KEY"):
            os.environ.pop(var, None)
        from agentflow_dagster.settings import Settings, get_settings
        from agentflow_dagster.stack.stack import Stack

        get_settings.cache_clear()
        settings = Settings()
        self._started("postgres", services.start_postgres(self.data_dir, self.ports["postgres"]).pid)
        self._started("redis", services.start_redis(self.data_dir, self.ports["redis"]).pid)
        # The object store is always S3 (the embedded SeaweedFS, its keys in its credentials file).
        self._started("seaweedfs (s3)", services.start_seaweedfs(self.data_dir, self.ports["s3"]).pid)
        self._started("tansu (kafka)", services.start_kafka(self.data_dir, self.ports["kafka"]).pid)
        stack = Stack(settings)
        stack.ensure_buckets()
        stack.prepare()
        # Two homes on the same storage: `dagster_home` is the repo's dagster.yaml (the platform), and
        # `dagster_home_stock` the same settings on stock Dagster classes (the baseline).
        home_yaml = self.data_dir / "dagster_home" / "dagster.yaml"
        self.platform_instance = yaml.safe_load(home_yaml.read_text())
        self.stock_home = self.data_dir / "dagster_home_stock"
        self.stock_home.mkdir(parents=True, exist_ok=True)
        self.write_homes()
        self.env = {**stack.process_env(), **(extra_env or {}), "DAGSTER_HOME": str(self.stock_home)}
        # This process reads the same instance and settings as the daemons it starts.
        os.environ.update(self.env)
        get_settings.cache_clear()
        return self

    def _started(self, name: str, pid: int) -> None:
        self.servers[name] = pid
        self.pids.append(pid)

    def start_embeddings(self) -> str:
        """The embedding service `agentflow up` starts; its URL goes to every process started after this
        (AGENTFLOW_EMBED_URL), so run workers never load the model. Returns once the model answers."""
        from agentflow_dagster.rag import embed_service

        os.environ["AGENTFLOW_EMBED_PORT"] = str(services.free_port())  # start_service reads it here
        svc = embed_service.start_service(self.data_dir, os.environ)
        self._started("embedding service", svc.pid)
        embed_service.wait_started(svc.address, svc.log, svc.pid)
        self.env["AGENTFLOW_EMBED_URL"] = svc.address
        os.environ["AGENTFLOW_EMBED_URL"] = svc.address
        return svc.address

    @property
    def platform_home(self) -> Path:
        return self.data_dir / "dagster_home"

    def write_homes(
        self,
        default_launcher: bool = False,
        max_concurrent_runs: int = 0,
        tenant_limit: int = 0,
        preload: str = "bench.platform_location",
    ) -> None:
        """Write both instance files from the repo's settings; the overrides apply to both sides.

        preload: the code location module the forkserver imports besides the repo's ("" when the daemon
        serves the repo's own location, agentflow_dagster.definitions)."""
        platform = json.loads(json.dumps(self.platform_instance))
        queue = platform["run_coordinator"]["config"]
        if max_concurrent_runs:
            queue["max_concurrent_runs"] = max_concurrent_runs
        if tenant_limit:
            (limit,) = [t for t in queue["tag_concurrency_limits"] if t["key"] == "agentflow/tenant"]
            limit["limit"] = tenant_limit
        if default_launcher:
            platform.pop("run_launcher", None)
        elif preload:
            # The forkserver preloads the code location the daemon serves, as in production.
            platform["run_launcher"]["config"]["preload_modules"].append(preload)
        (self.platform_home / "dagster.yaml").write_text(yaml.safe_dump(platform, sort_keys=False))
        stock = yaml.safe_dump(stock_instance(platform), sort_keys=False)
        (self.stock_home / "dagster.yaml").write_text(stock)

    @property
    def pg_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.ports['postgres']}/agentflow"

    @property
    def kafka(self) -> str:
        return f"127.0.0.1:{self.ports['kafka']}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.ports['redis']}/0"

    def start_daemon(
        self, workspace: Path, log_name: str, env: dict[str, str] | None = None, *, platform: bool = False
    ) -> int:
        """The daemon of one side, its own session; returns the pid (stop with stop_daemon).

        platform: the platform's daemon entry point and instance (`agentflow up` starts the same);
        else stock `dagster-daemon` on the stock instance."""
        if platform:
            cmd = [sys.executable, "-m", "agentflow_dagster.instance.daemon"]
            env = {"DAGSTER_HOME": str(self.platform_home), **(env or {})}
        else:
            cmd = [shutil.which("dagster-daemon", path=str(Path(sys.executable).parent)) or "dagster-daemon"]
        log = self.data_dir / "logs" / f"{log_name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [*cmd, "run", "-w", str(workspace)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**self.env, **(env or {})},
                cwd=REPO,
                start_new_session=True,
            )
        return proc.pid

    @staticmethod
    def stop_daemon(pid: int) -> None:
        """The daemon, its code server and any run workers below it."""
        services.stop_pid(pid, timeout=20)

    def stop(self) -> list[str]:
        """Stop every server this stack started, by pid, newest first, and wait until each is gone;
        returns what still runs (a server's pid, or any process naming the stack's data dir or ports)."""
        services.stop_postgres(self.data_dir)
        for pid in reversed(self.pids):
            if services.pid_alive(pid):
                services.stop_pid(pid, timeout=30)
        left = leftover_processes(self.pids, [str(self.data_dir), *(f":{p}" for p in self.ports.values())])
        self.pids.clear()
        self.servers.clear()
        return left


def exit_on_sigterm() -> None:
    """A SIGTERM (a timeout, a kill by pid) raises SystemExit, so the caller's `finally` stops the stack:
    its servers run in their own sessions and would otherwise outlive the benchmark."""
    import signal

    def _exit(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


def leftover_processes(pids: Sequence[int], markers: Sequence[str]) -> list[str]:
    """'pid cmdline' of each live process among `pids` or whose command line contains a marker."""
    import psutil

    me = os.getpid()
    left = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        info = proc.info
        if info["pid"] == me or info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cmd = " ".join(info["cmdline"] or [])
        # A marker ends where a digit does not follow (":5432" must not match ":54321").
        if info["pid"] in pids or any(re.search(re.escape(m) + r"(?!\d)", cmd) for m in markers):
            left.append(f"{info['pid']} {cmd[:160]}")
    return left


def stock_instance(platform: dict[str, Any]) -> dict[str, Any]:
    """The platform's instance settings on stock Dagster: Postgres storage without a pool, the stock
    queued coordinator (same limits; whole-second dequeue loop), Dagster's default run launcher."""
    stock = json.loads(json.dumps(platform))
    url = stock["storage"]["custom"]["config"]["postgres_url"]
    stock["storage"] = {"postgres": {"postgres_url": url}}
    queue = stock["run_coordinator"]
    queue["module"], queue["class"] = "dagster.core.run_coordinator", "QueuedRunCoordinator"
    queue["config"].pop("dequeue_interval_ms", None)
    stock.pop("run_launcher", None)
    stock.pop("compute_logs", None)  # Dagster's default LocalComputeLogManager
    return stock


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.5) -> bool:
    """Poll `check` until true or `timeout`; bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()
