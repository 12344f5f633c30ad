"""WarmForkRunLauncher's health check and terminate: what run monitoring relies on."""

from __future__ import annotations

import os
import subprocess
import sys

import dagster as dg
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
