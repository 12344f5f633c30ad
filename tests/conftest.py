"""Session fixtures: real servers on free loopback ports, started on first use and stopped at the end."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from agentflow_dagster import names
from agentflow_dagster.db import migrate
from agentflow_dagster.stack import services
from resources.object_store import ObjectStore
from tests.support.seaweed import SeaweedServer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def servers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def pg_url(servers_dir: Path) -> Iterator[str]:
    """A fresh embedded Postgres (with pgvector) on a free port, app schema migrated."""
    svc = services.start_postgres(servers_dir, services.free_port())
    try:
        migrate(svc.address)
        yield svc.address
    finally:
        services.stop_postgres(servers_dir)


@pytest.fixture(scope="session")
def redis_url(servers_dir: Path) -> Iterator[str]:
    svc = services.start_redis(servers_dir, services.free_port())
    try:
        yield svc.address
    finally:
        services.stop_pid(svc.pid)


@pytest.fixture(scope="session")
def kafka_bootstrap(servers_dir: Path) -> Iterator[str]:
    """A Tansu broker with the DESIGN.md topics created (4 partitions each)."""
    from resources.kafka import KafkaResource

    svc = services.start_kafka(servers_dir, services.free_port())
    try:
        KafkaResource(bootstrap_servers=svc.address).ensure_topics(names.TOPICS, partitions=4)
        yield svc.address
    finally:
        services.stop_pid(svc.pid)


@pytest.fixture(scope="session")
def s3_server(servers_dir: Path) -> Iterator[SeaweedServer]:
    """SeaweedFS (the embedded S3 server) on free ports with the DESIGN.md buckets.

    Its keys are in servers_dir/seaweedfs and AGENTFLOW_S3_PORT names its port for this session, so
    `Settings(data_dir=servers_dir)` (and any process started from here) finds it as `agentflow up`'s.
    """
    server = SeaweedServer(servers_dir).start()
    saved = os.environ.get("AGENTFLOW_S3_PORT")
    os.environ["AGENTFLOW_S3_PORT"] = str(server.port)
    try:
        server.store()
        yield server
    finally:
        server.stop()
        if saved is None:
            os.environ.pop("AGENTFLOW_S3_PORT", None)
        else:
            os.environ["AGENTFLOW_S3_PORT"] = saved


@pytest.fixture(scope="session")
def object_store(s3_server: SeaweedServer) -> ObjectStore:
    """The S3 object store of the session's SeaweedFS."""
    return s3_server.store()


@pytest.fixture(scope="session")
def object_store_dir(servers_dir: Path, s3_server: SeaweedServer) -> Path:
    """The data directory's local-directory root (explicit opt-in, `local_dir=`) with the DESIGN.md buckets.

    Settings built on its parent reach the session's SeaweedFS, as the platform always talks S3.
    """
    from resources.object_store import LocalObjectStore

    root = servers_dir / "objects"
    store = LocalObjectStore(root)
    for bucket in names.BUCKETS:
        store.ensure_bucket(bucket)
    return root


def _leftovers(basetemp: str) -> list[psutil.Process]:
    """Processes started by this session: our children, or anything running out of our temp dirs."""
    me = psutil.Process()
    found = {p.pid: p for p in me.children(recursive=True)}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.pid != me.pid and basetemp in " ".join(proc.info["cmdline"] or []):
                found[proc.pid] = proc
        except psutil.Error:
            continue
    return list(found.values())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The suite must leave no process running: report, stop and fail on any leftover."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    basetemp = str(factory.getbasetemp())
    leftovers = [p for p in _leftovers(basetemp) if p.is_running()]
    if not leftovers:
        return
    desc = []
    for proc in leftovers:
        try:
            desc.append(f"{proc.pid} {' '.join(proc.cmdline())[:160]}")
            proc.kill()
        except psutil.Error:
            continue
    if desc:
        print("\nLEFTOVER PROCESSES (killed):\n  " + "\n  ".join(desc))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
