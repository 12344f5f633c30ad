"""A run launcher whose run workers fork from a process that has already imported the code location.

The default launcher asks the code server to spawn a fresh interpreter per run, and the dequeue
worker waits until that interpreter has imported the code location (seconds on a busy 2-core host).
Here a `multiprocessing` forkserver imports `preload_modules` once; each run still gets its own
process (forked from it, so a crash or leak stays in that run), executed by the same code path as
`dagster api execute_run`. Run monitoring checks the worker's pid; terminate cancels like the default.
Opt-in (see docs/performance.md): a code change needs a daemon restart to reach new run workers.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
from dagster._core.launcher.base import CheckRunHealthResult, LaunchRunContext, RunLauncher, WorkerStatus
from dagster._serdes import ConfigurableClass, ConfigurableClassData, deserialize_value, serialize_value

PID_TAG = "agentflow/worker_pid"


def _run_worker(run_id: str, instance_ref_json: str) -> None:
    """Body of one forked run worker: what `dagster api execute_run` does, minus the interpreter start."""
    from dagster._cli.api import _execute_run_command_body
    from dagster._core.instance.ref import InstanceRef
    from dagster._utils.interrupts import capture_interrupts

    ref = deserialize_value(instance_ref_json, InstanceRef)
    with capture_interrupts(), dg.DagsterInstance.from_ref(ref) as instance:
        _execute_run_command_body(run_id, instance, lambda event: None, set_exit_code_on_failure=False)


class WarmForkRunLauncher(RunLauncher, ConfigurableClass):
    """Runs each run in its own process, forked from a forkserver that preloaded the code location."""

    def __init__(self, preload_modules: Sequence[str] = (), inst_data: ConfigurableClassData | None = None):
        self._inst_data = inst_data
        self.preload_modules = list(preload_modules)
        self._ctx: Any = None
        self._lock = threading.Lock()
        self._workers: dict[str, Any] = {}
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {"preload_modules": dg.Field([str], is_required=False, default_value=[])}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> WarmForkRunLauncher:
        return cls(preload_modules=config_value.get("preload_modules", []), inst_data=inst_data)

    def _context(self) -> Any:
        with self._lock:
            if self._ctx is None:
                ctx = multiprocessing.get_context("forkserver")
                # The forkserver imports these once; it starts (and pays for them) on the first launch.
                ctx.set_forkserver_preload(["dagster", *self.preload_modules])
                self._ctx = ctx
            return self._ctx

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        ref = serialize_value(self._instance.get_ref())
        process = self._context().Process(target=_run_worker, args=(run.run_id, ref), daemon=False)
        process.start()
        with self._lock:
            self._workers = {k: p for k, p in self._workers.items() if p.is_alive()}
            self._workers[run.run_id] = process
        self._instance.add_run_tags(run.run_id, {PID_TAG: str(process.pid)})

    @staticmethod
    def _pid_of(run: dg.DagsterRun) -> int | None:
        raw = run.tags.get(PID_TAG)
        return int(raw) if raw and raw.isdigit() else None

    @staticmethod
    def _alive(pid: int) -> bool:
        import psutil

        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        pid = self._pid_of(run) if run is not None else None
        if run is None or pid is None or not self._alive(pid):
            return False
        self._instance.report_run_canceling(run)
        # SIGINT: the worker's capture_interrupts turns it into Dagster's own interrupt handling.
        os.kill(pid, signal.SIGINT)
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        pid = self._pid_of(run)
        if pid is None:
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "no worker pid recorded yet")
        if self._alive(pid):
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=str(pid))
        return CheckRunHealthResult(
            WorkerStatus.FAILED, f"run worker pid {pid} is gone", run_worker_id=str(pid)
        )
