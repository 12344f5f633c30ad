"""`agentflow up / status / down / up` end to end on free ports, the UI in headless Chromium, no leftovers."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import psycopg2
import pytest

from agentflow_dagster import names
from agentflow_dagster.stack.services import free_port, free_seaweed_port, pid_alive, s3_credentials_path
from resources.object_store import ObjectStore, ObjectStoreResource

pytestmark = pytest.mark.stack
AGENTFLOW = [sys.executable, "-m", "agentflow_dagster"]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _env(data_dir: Path, ports: dict[str, int], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFLOW_")}
    env.update(
        AGENTFLOW_DATA_DIR=str(data_dir),
        AGENTFLOW_POSTGRES_PORT=str(ports["postgres"]),
        AGENTFLOW_REDIS_PORT=str(ports["redis"]),
        AGENTFLOW_KAFKA_PORT=str(ports["kafka"]),
        AGENTFLOW_WEBSERVER_PORT=str(ports["webserver"]),
        AGENTFLOW_METRICS_PORT=str(ports["metrics"]),
        AGENTFLOW_S3_PORT=str(ports["s3"]),
        **extra,
    )
    return env


def _ports() -> dict[str, int]:
    ports = {k: free_port() for k in ("postgres", "redis", "kafka", "webserver", "metrics")}
    return {**ports, "s3": free_seaweed_port()}


def _store(data_dir: Path, ports: dict[str, int]) -> ObjectStore:
    """The stack's SeaweedFS, reached as every platform process reaches it (keys from the data dir)."""
    return ObjectStoreResource(
        endpoint=f"127.0.0.1:{ports['s3']}", credentials_file=str(s3_credentials_path(data_dir))
    ).build()


def _cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AGENTFLOW, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _recorded_pids(data_dir: Path) -> dict[str, int]:
    state = json.loads((data_dir / "stack.json").read_text())
    return {k: v["pid"] for k, v in state["services"].items() if v.get("managed")}


def _ui_dom(url: str, out_dir: Path) -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is installed by .ci/setup.sh"
    profile = tempfile.mkdtemp(prefix="chromium-")
    try:
        base = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=20000"]
        base.append("--window-size=1400,900")
        subprocess.run(
            [*base, f"--screenshot={out_dir / 'dagster-ui.png'}", url], capture_output=True, timeout=120
        )
        dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120)
        return dom.stdout
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture()
def stack_env(tmp_path: Path):  # type: ignore[no-untyped-def]
    ports = _ports()
    data_dir = tmp_path / "af"
    env = _env(data_dir, ports)
    yield data_dir, ports, env
    _cli(env, "down", timeout=120)


def test_up_status_down_up_keeps_data_and_serves_ui(stack_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data_dir, ports, env = stack_env
    up = _cli(env, "up")
    assert up.returncode == 0, up.stdout + up.stderr

    status = _cli(env, "status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    components = {c["component"]: c for c in json.loads(status.stdout)}
    assert set(components) >= {
        "postgres",
        "redis",
        "kafka",
        "object_store",
        "dagster_webserver",
        "dagster_daemon",
        "code_location",
        "metrics",
    }
    assert all(c["healthy"] for c in components.values()), components
    assert str(ports["kafka"]) in components["kafka"]["address"]
    assert components["object_store"]["address"] == f"127.0.0.1:{ports['s3']}"
    assert "S3 ListBuckets" in components["object_store"]["detail"]
    assert (data_dir / "seaweedfs" / "credentials.json").stat().st_mode & 0o077 == 0  # keys: owner only

    out_dir = Path(os.environ.get("AGENTFLOW_TEST_OUTPUT", "test-output")) / "stack"
    out_dir.mkdir(parents=True, exist_ok=True)
    dom = _ui_dom(f"http://127.0.0.1:{ports['webserver']}/locations", out_dir)
    assert "agentflow" in dom, dom[-2000:]
    assert (out_dir / "dagster-ui.png").stat().st_size > 10_000

    pg = f"postgresql://postgres@127.0.0.1:{ports['postgres']}/agentflow"
    with psycopg2.connect(pg) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO audit_log (actor, action) VALUES ('test', 'survives-restart')")
    _store(data_dir, ports).put(names.BUCKET_DOCUMENTS, "kept.txt", b"kept")

    pids = _recorded_pids(data_dir)
    down = _cli(env, "down")
    assert down.returncode == 0, down.stderr
    assert not any(pid_alive(p) for p in pids.values()), pids
    assert _cli(env, "status").returncode == 1

    again = _cli(env, "up")
    assert again.returncode == 0, again.stdout + again.stderr
    with psycopg2.connect(pg) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM audit_log WHERE action = 'survives-restart'")
        assert cur.fetchone() == (1,)
    assert _store(data_dir, ports).get(names.BUCKET_DOCUMENTS, "kept.txt") == b"kept"
    assert _cli(env, "status").returncode == 0


def test_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    ports = _ports()
    env = _env(tmp_path / "af", ports)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", ports["redis"]))
        blocker.listen()
        up = _cli(env, "up")
    try:
        assert up.returncode != 0
        assert "Traceback" not in up.stderr
        err = [line for line in up.stderr.splitlines() if line.startswith("Error")]
        assert len(err) == 1 and f"redis (127.0.0.1:{ports['redis']})" in err[0] and "Fix:" in err[0], (
            up.stderr
        )
    finally:
        _cli(env, "down")


def test_unreachable_external_url_is_a_one_line_error(tmp_path: Path) -> None:
    ports = _ports()
    bad = f"127.0.0.1:{free_port()}"
    env = _env(tmp_path / "af", ports, AGENTFLOW_KAFKA_BOOTSTRAP_SERVERS=bad)
    try:
        up = _cli(env, "up")
        assert up.returncode != 0 and "Traceback" not in up.stderr
        assert f"kafka ({bad})" in up.stderr and "AGENTFLOW_KAFKA_BOOTSTRAP_SERVERS" in up.stderr, up.stderr
    finally:
        _cli(env, "down")


def test_external_redis_is_used_not_started(tmp_path: Path, redis_url: str) -> None:
    ports = _ports()
    data_dir = tmp_path / "af"
    env = _env(data_dir, ports, AGENTFLOW_REDIS_URL=redis_url)
    try:
        assert _cli(env, "up").returncode == 0
        assert "redis" not in _recorded_pids(data_dir)
        status = {c["component"]: c for c in json.loads(_cli(env, "status", "--json").stdout)}
        assert status["redis"]["healthy"] and status["redis"]["address"] == redis_url
    finally:
        _cli(env, "down")
    redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    assert any(
        c.laddr and c.laddr.port == redis_port for c in psutil.net_connections("tcp") if c.status == "LISTEN"
    ), "down must not stop an external Redis"
