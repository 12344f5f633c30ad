"""A real `dagster-webserver` on a free loopback port, over a small code location, stopped by pid."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from agentflow_dagster.stack.services import free_port

# A stand-in workflow job: its `request` op accepts the run config the launchers build.
REQUEST_JOB = """
import dagster as dg


@dg.op(config_schema=dg.Permissive())
def request(context):
    return context.op_config


@dg.job(name="support_triage")
def support_triage():
    request()


defs = dg.Definitions(jobs=[support_triage])
"""
# Queued runs are never started without a daemon: tests see launches, and no run process outlives them.
QUEUED_INSTANCE = """
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
telemetry:
  enabled: false
"""


@contextlib.contextmanager
def dagster_webserver(root: Path, location: str, job_source: str = REQUEST_JOB) -> Iterator[str]:
    """Serve `job_source` as code location `location` from `root`; yields the webserver's URL."""
    (root / "jobs.py").write_text(job_source)
    (root / "workspace.yaml").write_text(
        f"load_from:\n  - python_file:\n      relative_path: {root / 'jobs.py'}\n"
        f"      location_name: {location}\n"
    )
    home = root / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(QUEUED_INSTANCE)
    port = free_port()
    log = (root / "webserver.log").open("wb")
    bin_dir = Path(sys.executable).parent
    proc = subprocess.Popen(
        [
            str(bin_dir / "dagster-webserver"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            str(root / "workspace.yaml"),
        ],
        env={"DAGSTER_HOME": str(home), "PATH": f"{bin_dir}:/usr/bin:/bin"},
        stdout=log,
        stderr=log,
        cwd=root,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/server_info", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (root / "webserver.log").read_text()[
                -2000:
            ]
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


def runs_for_event(url: str, event_id: str) -> list[str]:
    """Run ids the webserver knows for tag agentflow/event_id = `event_id`."""
    resp = httpx.post(
        f"{url}/graphql",
        json={
            "query": "query($t:[ExecutionTag!]){runsOrError(filter:{tags:$t}){... on Runs{results{runId}}}}",
            "variables": {"t": [{"key": "agentflow/event_id", "value": event_id}]},
        },
        timeout=10,
    )
    return [r["runId"] for r in resp.json()["data"]["runsOrError"]["results"]]
