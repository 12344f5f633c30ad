"""Dagster's own entry points from a plain checkout: `dagster definitions validate` and `dagster dev` run
without a stack (SQLite instance under $AGENTFLOW_DATA_DIR/dagster_dev); with DAGSTER_HOME set and no
Postgres URL the error is one line naming `agentflow up` and the variable."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from agentflow_dagster.stack.services import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
VARIABLE = "AGENTFLOW_DAGSTER_POSTGRES_URL"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTFLOW_", "DAGSTER_", "OPENAI_"))}
    return {
        **env,
        "PATH": f"{BIN}:{env.get('PATH', '')}",
        "AGENTFLOW_DATA_DIR": str(tmp_path / "data"),
        **extra,
    }


def _dagster(tmp_path: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "dagster"), *args],
        cwd=ROOT,
        env=_env(tmp_path, **extra),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("target", [["-w", "workspace.yaml"], ["-m", "agentflow_dagster.definitions"]])
def test_definitions_validate_from_a_plain_checkout(tmp_path: Path, target: list[str]) -> None:
    done = _dagster(tmp_path, "definitions", "validate", *target)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All code locations passed validation" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert (tmp_path / "data" / "dagster_dev" / "history").is_dir()  # Dagster's SQLite layout


def test_a_home_without_the_postgres_url_fails_in_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    done = _dagster(tmp_path, "definitions", "validate", "-w", "workspace.yaml", DAGSTER_HOME=str(home))
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and VARIABLE in errors[0] and "`agentflow up`" in errors[0], done.stderr
    assert "Traceback" not in done.stderr


def test_dagster_dev_serves_the_code_location_from_a_plain_checkout(tmp_path: Path) -> None:
    port = free_port()
    before = set(ROOT.glob(".tmp_dagster_home_*"))
    log = (tmp_path / "dev.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN / "dagster"), "dev", "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT,
        env=_env(tmp_path),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its webserver, daemon and code servers share its process group
    )
    query = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"
    try:
        deadline = time.monotonic() + 240
        entries: list[dict[str, str]] = []
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                resp = httpx.post(f"http://127.0.0.1:{port}/graphql", json={"query": query}, timeout=5)
                entries = resp.json()["data"]["workspaceOrError"]["locationEntries"]
                if entries and entries[0]["loadStatus"] == "LOADED":
                    break
            except (httpx.HTTPError, KeyError, TypeError, ValueError):
                pass
            time.sleep(2)
        assert entries == [{"name": "agentflow", "loadStatus": "LOADED"}], (tmp_path / "dev.log").read_text()[
            -3000:
        ]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # dagster dev's own shutdown: children stop, temp home removed
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()
        for leftover in set(ROOT.glob(".tmp_dagster_home_*")) - before:
            shutil.rmtree(leftover, ignore_errors=True)
    text = (tmp_path / "dev.log").read_text()
    assert f"{VARIABLE} is not set and DAGSTER_HOME is unset" in text
    assert "DagsterInvalidConfigError" not in text
