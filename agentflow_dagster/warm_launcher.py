"""A run launcher whose run workers fork from a process that has already imported the code location.

The default launcher asks the code server to spawn a fresh interpreter per run, and the dequeue
worker waits until that interpreter has imported the code location (seconds on a busy 2-core host).
Here a `multiprocessing` forkserver imports `preload_modules` once; each run still gets its own
process (forked from it, so a crash or leak stays in that run), executed by the same code path as
`dagster api execute_run`. Run monitoring checks the worker's pid; terminate cancels like the default.

`standby_workers` processes are forked ahead of time: each has already opened its Dagster instance
(storage connections) and loaded the repository, and waits on a pipe for one run id. A launch hands
the run to a standby when one is ready (and forks a replacement in the background), else forks a
worker as before. A standby serves exactly one run, then exits like any run worker; it exits without
running anything when the launcher is disposed or its process dies (the pipe closes). Standbys are
started by the first launch (only the process that launches runs, the daemon, ever has any).
The shipped default (dagster.yaml); a code change needs a daemon restart to reach new run workers.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import dagster as dg
from dagster._core.launcher.base import CheckRunHealthResult, LaunchRunContext, RunLauncher, WorkerStatus
from dagster._serdes import ConfigurableClass, ConfigurableClassData, deserialize_value, serialize_value

PID_TAG = "agentflow/worker_pid"
_log = logging.getLogger(__name__)


@contextlib.contextmanager
def _worker_instance(instance_ref_json: str) -> Iterator[dg.DagsterInstance]:
    """The run worker's instance, with Dagster's interrupt handling, as `dagster api execute_run` sets up."""
    from dagster._core.instance.ref import InstanceRef
    from dagster._utils.interrupts import capture_interrupts

    from agentflow_dagster.instance.storage import assume_tables_exist

    # The launching daemon opened this storage (creating any missing table): no table checks here.
    assume_tables_exist()
    ref = deserialize_value(instance_ref_json, InstanceRef)
    with capture_interrupts(), dg.DagsterInstance.from_ref(ref) as instance:
        yield instance


def _execute(run_id: str, instance: dg.DagsterInstance) -> None:
    from dagster._cli.api import _execute_run_command_body

    from agentflow_dagster.project import refresh_if_changed

    # Preloaded before a project edit + reload: re-import, so the run sees the files as they are now.
    refresh_if_changed()

    _execute_run_command_body(run_id, instance, lambda event: None, set_exit_code_on_failure=False)


def _run_worker(run_id: str, instance_ref_json: str) -> None:
    """Body of one forked run worker: what `dagster api execute_run` does, minus the interpreter start."""
    with _worker_instance(instance_ref_json) as instance:
        _execute(run_id, instance)


def _warm_instance(instance: dg.DagsterInstance) -> None:
    """What each run worker otherwise did after its run arrived (py-spy, issue 16): the run storage's
    schema check behind its first run read, and the compute log manager (an S3 client) built on first
    use. A failure here is left to the run, which meets it again and reports it."""
    with contextlib.suppress(Exception):
        instance.get_run_records(limit=1)
    with contextlib.suppress(Exception):
        _ = instance.compute_log_manager


def _warm_resources(defs: dg.Definitions) -> None:
    """Resources with a `warm()` method open their per-process connections before the run arrives."""
    for resource in (defs.resources or {}).values():
        warm = getattr(resource, "warm", None)
        if callable(warm):
            with contextlib.suppress(Exception):
                warm()


def _standby_worker(conn: Any, instance_ref_json: str, preload_modules: Sequence[str]) -> None:
    """A run worker started before its run: instance open, repositories loaded, then one run id."""
    import importlib

    with _worker_instance(instance_ref_json) as instance:
        # Warm what every run needs: a pooled storage connection, and each preloaded module's
        # repository definition (Definitions resolve lazily, once per process).
        instance.get_runs_count()
        for name in preload_modules:
            defs = getattr(importlib.import_module(name), "defs", None)
            if isinstance(defs, dg.Definitions):
                defs.get_repository_def()
                _warm_resources(defs)
        _warm_instance(instance)
        conn.send("ready")
        try:
            run_id = conn.recv()
        except (EOFError, OSError):
            return  # the launcher's process is gone: nothing was handed over
        finally:
            conn.close()
        if run_id:
            _execute(run_id, instance)


class WarmForkRunLauncher(RunLauncher, ConfigurableClass):
    """Runs each run in its own process, forked from a forkserver that preloaded the code location."""

    def __init__(
        self,
        preload_modules: Sequence[str] = (),
        inst_data: ConfigurableClassData | None = None,
        standby_workers: int = 0,
    ):
        if standby_workers < 0:
            raise ValueError(f"WarmForkRunLauncher: standby_workers must be >= 0, got {standby_workers}")
        self._inst_data = inst_data
        self.preload_modules = list(preload_modules)
        self.standby_workers = standby_workers
        self._ctx: Any = None
        self._lock = threading.Lock()
        self._workers: dict[str, Any] = {}
        # (process, launcher end of its pipe), oldest first; only ready ones are handed runs.
        self._standby: list[tuple[Any, Any]] = []
        self._refilling = False
        self._disposed = False
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {
            "preload_modules": dg.Field([str], is_required=False, default_value=[]),
            "standby_workers": dg.Field(int, is_required=False, default_value=0),
        }

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> WarmForkRunLauncher:
        return cls(
            preload_modules=config_value.get("preload_modules", []),
            inst_data=inst_data,
            standby_workers=config_value.get("standby_workers", 0),
        )

    def _context(self) -> Any:
        with self._lock:
            if self._ctx is None:
                ctx = multiprocessing.get_context("forkserver")
                # The forkserver imports these once; it starts (and pays for them) on the first launch.
                # agentflow_dagster.instance.preload: the storage layer and clients every run imports.
                ctx.set_forkserver_preload(
                    ["dagster", "agentflow_dagster.instance.preload", *self.preload_modules]
                )
                self._ctx = ctx
            return self._ctx

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        process = self._hand_to_standby(run.run_id)
        if process is None:
            ref = serialize_value(self._instance.get_ref())
            process = self._context().Process(target=_run_worker, args=(run.run_id, ref), daemon=False)
            process.start()
            self._instance.add_run_tags(run.run_id, {PID_TAG: str(process.pid)})
        with self._lock:
            self._workers = {k: p for k, p in self._workers.items() if p.is_alive()}
            self._workers[run.run_id] = process
        self._refill()

    def _hand_to_standby(self, run_id: str) -> Any:
        """The standby process now running `run_id` (pid tagged first), or None when none is ready."""
        while True:
            with self._lock:
                ready = next((s for s in self._standby if s[1].poll()), None)
                if ready is None:
                    return None
                self._standby.remove(ready)
            process, conn = ready
            try:
                if conn.recv() != "ready" or not process.is_alive():
                    raise EOFError("standby not ready")
                # Tag before handing over: run monitoring must never see a running run without its pid.
                self._instance.add_run_tags(run_id, {PID_TAG: str(process.pid)})
                conn.send(run_id)
                return process
            except (EOFError, OSError) as exc:
                _log.warning("standby run worker pid %s unusable (%s); trying the next", process.pid, exc)
                if process.is_alive():
                    # It may have died after the tag was written: the next worker's tag replaces it.
                    process.kill()
            finally:
                conn.close()

    def _refill(self) -> None:
        """Fork standbys up to `standby_workers` in a background thread (one refill at a time)."""
        with self._lock:
            if self._disposed or self._refilling or self.standby_workers == 0 or not self.has_instance:
                return
            self._refilling = True
        threading.Thread(target=self._refill_body, name="warm-launcher-standby", daemon=True).start()

    def _refill_body(self) -> None:
        try:
            ref = serialize_value(self._instance.get_ref())
            while True:
                with self._lock:
                    self._standby = [s for s in self._standby if s[0].is_alive()]
                    if self._disposed or len(self._standby) >= self.standby_workers:
                        return
                ctx = self._context()
                ours, theirs = ctx.Pipe()
                process = ctx.Process(
                    target=_standby_worker, args=(theirs, ref, self.preload_modules), daemon=False
                )
                process.start()
                theirs.close()
                with self._lock:
                    self._standby.append((process, ours))
        except Exception:  # a failed refill only means cold launches; never the daemon's problem
            _log.exception("could not start standby run workers; launches fork on demand")
        finally:
            with self._lock:
                self._refilling = False

    def dispose(self) -> None:
        """Standbys that never got a run exit (their pipe closes); running workers are not touched."""
        with self._lock:
            self._disposed = True
            standby, self._standby = self._standby, []
        for process, conn in standby:
            with contextlib.suppress(OSError):
                conn.send(None)
            conn.close()
            process.join(timeout=5)

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
