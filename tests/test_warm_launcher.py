"""WarmForkRunLauncher's health check and terminate: what run monitoring relies on."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import dagster as dg
import pytest
from dagster._core.launcher.base import WorkerStatus
from dagster._serdes import ConfigurableClassData

from agentflow_dagster.warm_launcher import PID_TAG, WarmForkRunLauncher


def _run(**tags: str) -> dg.DagsterRun:
    return dg.DagsterRun(job_name="j", run_id="r1", tags=tags)


def test_health_follows_the_worker_pid() -> None:
    launcher = WarmForkRunLauncher()
    assert launcher.supports_check_run_worker_health
    assert launcher.check_run_worker_health(_run()).status == WorkerStatus.UNKNOWN
    assert (
        launcher.check_run_worker_health(_run(**{PID_TAG: str(os.getpid())})).status == WorkerStatus.RUNNING
    )
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    result = launcher.check_run_worker_health(_run(**{PID_TAG: str(dead.pid)}))
    assert result.status == WorkerStatus.FAILED and str(dead.pid) in (result.msg or "")


def test_config_round_trip() -> None:
    data = ConfigurableClassData("agentflow_dagster.warm_launcher", "WarmForkRunLauncher", "{}")
    launcher = WarmForkRunLauncher.from_config_value(
        data, {"preload_modules": ["agentflow_dagster.definitions"]}
    )
    assert launcher.preload_modules == ["agentflow_dagster.definitions"]


def _submit(instance: dg.DagsterInstance) -> dg.DagsterRun:
    from dagster._core.definitions.reconstruct import reconstructable

    from tests.support.tiny_jobs import tiny_job

    recon = reconstructable(tiny_job)
    return instance.create_run_for_job(tiny_job, job_code_origin=recon.get_python_origin())


def _wait_finished(instance: dg.DagsterInstance, run_id: str, timeout: float = 90) -> dg.DagsterRun:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = instance.get_run_by_id(run_id)
        assert run is not None
        if run.is_finished:
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not finish in {timeout} s")


@pytest.fixture
def forkserver() -> Iterator[None]:
    """The launcher starts this process's multiprocessing forkserver (and resource tracker): stop both."""
    yield
    import multiprocessing.forkserver
    import multiprocessing.resource_tracker

    multiprocessing.forkserver._forkserver._stop()  # type: ignore[attr-defined]
    multiprocessing.resource_tracker._resource_tracker._stop()  # type: ignore[attr-defined]


def test_standby_worker_runs_the_next_launch_and_dispose_stops_the_rest(tmp_path, forkserver) -> None:
    """First launch forks on demand and starts standbys; the next launch is handed to a standby whose
    pid is tagged before it runs; disposing the launcher ends unused standbys."""
    import time

    import psutil
    from dagster._core.launcher.base import LaunchRunContext

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        launcher = WarmForkRunLauncher(preload_modules=["tests.support.tiny_jobs"], standby_workers=2)
        launcher.register_instance(instance)
        try:
            first = _submit(instance)
            launcher.launch_run(LaunchRunContext(dagster_run=first, workspace=None))
            assert _wait_finished(instance, first.run_id).status == dg.DagsterRunStatus.SUCCESS

            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and sum(c.poll() for _, c in launcher._standby) < 2:
                time.sleep(0.2)
            standby_pids = {p.pid for p, _ in launcher._standby}
            assert len(standby_pids) == 2, "two standbys ready"

            second = _submit(instance)
            launcher.launch_run(LaunchRunContext(dagster_run=second, workspace=None))
            tagged = int(instance.get_run_by_id(second.run_id).tags[PID_TAG])  # type: ignore[union-attr]
            assert tagged in standby_pids, "the run went to a standby, tagged at hand-over"
            assert _wait_finished(instance, second.run_id).status == dg.DagsterRunStatus.SUCCESS
            # The op ran in that very process.
            pids = [
                e.dagster_event.step_output_data.metadata["pid"].value
                for e in instance.all_logs(second.run_id)
                if e.dagster_event and e.dagster_event.event_type_value == "STEP_OUTPUT"
            ]
            assert pids == [tagged]
            leftover = standby_pids - {tagged}
        finally:
            launcher.dispose()
        for pid in leftover | {p.pid for p, _ in launcher._standby}:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and psutil.pid_exists(pid):
                try:
                    if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                        break
                except psutil.NoSuchProcess:
                    break
                time.sleep(0.1)
            assert not WarmForkRunLauncher._alive(pid), f"standby {pid} still alive after dispose"
        assert launcher._standby == []


def test_standby_config_is_checked() -> None:
    with pytest.raises(ValueError, match="standby_workers must be >= 0"):
        WarmForkRunLauncher(standby_workers=-1)
    data = ConfigurableClassData("agentflow_dagster.warm_launcher", "WarmForkRunLauncher", "{}")
    assert WarmForkRunLauncher.from_config_value(data, {"standby_workers": 3}).standby_workers == 3
