"""The instance pieces in dagster.yaml: pooled Postgres storage, fast dequeue loop, daemon sensor loop."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from agentflow_dagster.instance.coordinator import FastQueuedRunCoordinator, wait_for_submit
from agentflow_dagster.instance.daemon import (
    project_changed,
    set_dequeue_wake,
    set_sensor_loop,
    set_workspace_refresh,
)
from agentflow_dagster.instance.storage import PooledPostgresStorage

REPO = Path(__file__).resolve().parents[2]


def _psycopg2(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg2://", 1)


def _instance(home: Path, storage: dict) -> dg.DagsterInstance:
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump({"storage": storage, "telemetry": {"enabled": False}}))
    return dg.DagsterInstance.from_config(str(home))


@pytest.fixture
def dagster_db(pg_url: str) -> Iterator[str]:
    """A database of its own for Dagster's tables, dropped afterwards."""
    admin = sa.create_engine(_psycopg2(pg_url), isolation_level="AUTOCOMMIT")
    name = "dagster_pool_test"
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    try:
        yield _psycopg2(pg_url).rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@contextlib.contextmanager
def _counting_connects(engine: sa.Engine) -> Iterator[dict[str, int]]:
    """{"n": new connections the engine opened inside the block}."""
    count = {"n": 0}

    def on_connect(*_: object) -> None:
        count["n"] += 1

    sa.event.listen(engine, "connect", on_connect)
    try:
        yield count
    finally:
        sa.event.remove(engine, "connect", on_connect)


def _connects_per_query(instance: dg.DagsterInstance, run_id: str, n: int = 30) -> int:
    with _counting_connects(instance.run_storage._engine) as count:  # type: ignore[attr-defined]
        for _ in range(n):
            assert instance.get_run_by_id(run_id) is not None
    return count["n"]


def test_pooled_storage_reuses_connections_where_stock_connects_per_query(
    dagster_db: str, tmp_path: Path
) -> None:
    pooled_cfg = {
        "custom": {
            "module": "agentflow_dagster.instance.storage",
            "class": "PooledPostgresStorage",
            "config": {"postgres_url": dagster_db, "pool_size": 1, "max_overflow": 4},
        }
    }
    with _instance(tmp_path / "pooled", pooled_cfg) as pooled:
        # One pool (QueuePool, size 1 as configured) for the storages of this instance.
        engines = {s._engine for s in (pooled.run_storage, pooled.event_log_storage, pooled.schedule_storage)}  # type: ignore[attr-defined,union-attr]
        (engine,) = engines
        assert isinstance(engine.pool, sa.pool.QueuePool) and engine.pool.size() == 1
        run = pooled.create_run_for_job(_job(), run_id=None)
        pooled.report_engine_event("hello", run)
        assert [e.message for e in pooled.all_logs(run.run_id)][-1] == "hello"
        assert _connects_per_query(pooled, run.run_id) <= 1
        with _instance(tmp_path / "stock", {"postgres": {"postgres_url": dagster_db}}) as stock:
            # Same tables, same rows: the pooled class changes connections only.
            assert stock.get_run_by_id(run.run_id) is not None
            assert _connects_per_query(stock, run.run_id) >= 30  # at least one per query


def test_instances_of_a_process_share_one_pool(dagster_db: str, tmp_path: Path) -> None:
    """The code server opens an instance per sensor tick: the ticks reuse the process's pool (no new
    connection each), and disposing one instance leaves the pool to the next."""
    cfg = {
        "custom": {
            "module": "agentflow_dagster.instance.storage",
            "class": "PooledPostgresStorage",
            "config": {"postgres_url": dagster_db, "pool_size": 1, "max_overflow": 3},
        }
    }
    with _instance(tmp_path / "stock", {"postgres": {"postgres_url": dagster_db}}):
        pass  # the tables (this process checked them once already, on the fixture's earlier database)
    with _instance(tmp_path / "a", cfg) as first:
        run = first.create_run_for_job(_job(), run_id=None)
        engine = first.run_storage._engine  # type: ignore[attr-defined]
    with _counting_connects(engine) as connects:
        for i in range(5):  # five "ticks", each its own instance
            with _instance(tmp_path / f"tick{i}", cfg) as tick:
                assert tick.run_storage._engine is engine  # type: ignore[attr-defined]
                assert tick.get_run_by_id(run.run_id) is not None
    assert connects["n"] == 0  # the pooled connection of the first instance served every tick


def _notifications(url: str, action: Callable[[], object]) -> int:
    """How many `run_events` notifications Postgres delivers while `action` runs."""
    import select

    import psycopg2

    listener = psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://", 1))
    listener.set_session(autocommit=True)
    try:
        listener.cursor().execute("LISTEN run_events")
        action()
        select.select([listener], [], [], 1.0)  # delivered at commit: a second is plenty
        listener.poll()
        return len(listener.notifies)
    finally:
        listener.close()


def test_pooled_event_log_stores_events_and_assets_without_notify(dagster_db: str, tmp_path: Path) -> None:
    """Events and asset materializations are stored (and indexed) as stock does, minus the NOTIFY per
    event that nothing listens to."""
    cfg = {
        "custom": {
            "module": "agentflow_dagster.instance.storage",
            "class": "PooledPostgresStorage",
            "config": {"postgres_url": dagster_db},
        }
    }

    @dg.asset(name="notify_probe")
    def notify_probe() -> int:
        return 1

    with _instance(tmp_path / "stock", {"postgres": {"postgres_url": dagster_db}}):
        pass  # the tables (this process checked them once already, on the fixture's earlier database)
    with _instance(tmp_path / "pooled", cfg) as pooled:
        quiet = _notifications(dagster_db, lambda: dg.materialize([notify_probe], instance=pooled))
        assert quiet == 0
        record = pooled.get_latest_materialization_event(dg.AssetKey("notify_probe"))
        assert record is not None and record.asset_materialization is not None
        run = pooled.get_run_by_id(record.run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
        kinds = {e.dagster_event.event_type for e in pooled.all_logs(run.run_id) if e.dagster_event}
        assert {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS} <= kinds
    with _instance(tmp_path / "stock2", {"postgres": {"postgres_url": dagster_db}}) as stock:
        noisy = _notifications(dagster_db, lambda: dg.materialize([notify_probe], instance=stock))
        assert noisy >= 6  # one per event: what the pooled storage no longer sends


def test_pooled_storage_rejects_bad_pool_settings(dagster_db: str) -> None:
    with pytest.raises(ValueError, match="pool_size must be >= 1"):
        PooledPostgresStorage(dagster_db, pool_size=0)


@dg.op
def _noop() -> None:
    return None


def _job() -> dg.JobDefinition:
    @dg.job(name="pool_probe")
    def pool_probe() -> None:
        _noop()

    return pool_probe


def test_fast_coordinator_reads_the_repo_config_and_checks_the_interval() -> None:
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())["run_coordinator"]
    assert config["class"] == "FastQueuedRunCoordinator"
    coord = FastQueuedRunCoordinator.from_config_value(None, config["config"])  # type: ignore[arg-type]
    assert coord.dequeue_interval_seconds == config["config"]["dequeue_interval_ms"] / 1000 < 1
    assert coord.get_run_queue_config().max_concurrent_runs == config["config"]["max_concurrent_runs"]
    # Without the ms field it is the stock coordinator.
    assert FastQueuedRunCoordinator(dequeue_interval_seconds=3).dequeue_interval_seconds == 3
    with pytest.raises(ValueError, match="dequeue_interval_ms must be 50..60000"):
        FastQueuedRunCoordinator(dequeue_interval_ms=10)


def test_sensor_loop_is_set_and_checked() -> None:
    import dagster._daemon.sensor as sensor_daemon

    previous = set_sensor_loop(0.5)
    try:
        assert sensor_daemon.MIN_INTERVAL_LOOP_TIME == 0.5
        with pytest.raises(ValueError, match=r"within \(0, 5\]"):
            set_sensor_loop(0)
    finally:
        set_sensor_loop(previous)


def test_queued_run_wakes_the_dequeue_loop() -> None:
    """A run queued through the coordinator wakes the run queue daemon of the same process at once;
    without one the daemon waits its interval (at least 0.5 s), as the stock loop does."""
    import threading

    from dagster._core.remote_origin import (
        RegisteredCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )
    from dagster._core.run_coordinator import SubmitRunContext
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

    klass = QueuedRunCoordinatorDaemon
    stock_init, stock_iteration = klass.__init__, klass.run_iteration
    try:
        set_dequeue_wake()
        set_dequeue_wake()  # idempotent: wraps the stock methods once
        assert klass.run_iteration.__wrapped__ is stock_iteration  # type: ignore[attr-defined]
        daemon = QueuedRunCoordinatorDaemon(interval_seconds=0.25)
        assert (daemon.interval_seconds, daemon.agentflow_idle_seconds) == (0, 0.5)  # type: ignore[attr-defined]
    finally:
        klass.__init__ = stock_init  # type: ignore[method-assign]
        klass.run_iteration = stock_iteration  # type: ignore[method-assign]

    coordinator = {"module": "agentflow_dagster.instance.coordinator", "class": "FastQueuedRunCoordinator"}
    with dg.instance_for_test(overrides={"run_coordinator": coordinator}) as instance:
        assert wait_for_submit(0.05) is False  # nothing queued: the wait runs out
        location = RegisteredCodeLocationOrigin(location_name="probe")
        origin = RemoteJobOrigin(RemoteRepositoryOrigin(location, "repo"), "pool_probe")
        run = instance.create_run_for_job(_job(), remote_job_origin=origin)
        submit = SubmitRunContext(run, None)  # type: ignore[arg-type]  # the coordinator reads the run only
        threading.Timer(0.2, instance.run_coordinator.submit_run, (submit,)).start()
        assert wait_for_submit(60) is True  # woken by the submit, not by the 60 s timeout
        stored = instance.get_run_by_id(run.run_id)
        assert stored is not None and stored.status == dg.DagsterRunStatus.QUEUED
        assert wait_for_submit(0.05) is False  # the signal was consumed


class _Registry:
    def __init__(self) -> None:
        self.cleared = 0

    def clear_all_grpc_endpoints(self) -> None:
        self.cleared += 1


class _Workspace:
    def __init__(self) -> None:
        self.refreshed = 0

    def refresh_workspace(self) -> None:
        self.refreshed += 1


def test_workspace_refresh_on_interval_or_project_change() -> None:
    """The code server is replaced when the project changed or the interval passed (not every 60 s)."""
    import time

    import dagster._daemon.controller as controller

    klass = controller.DagsterDaemonController
    stock_check, stock_interval = klass.check_workspace_freshness, controller.RELOAD_WORKSPACE_INTERVAL
    flags = [False]
    fake = type("Controller", (), {})()
    fake._grpc_server_registry, fake._workspace_process_context = _Registry(), _Workspace()
    fake._logger = None
    try:
        assert set_workspace_refresh(600, lambda: flags[0]) == stock_interval == 60
        assert controller.RELOAD_WORKSPACE_INTERVAL == 600
        # 2 minutes since the last refresh: stock Dagster would start a new code server, this does not.
        last = time.time() - 120
        assert klass.check_workspace_freshness(fake, last) == last
        assert fake._workspace_process_context.refreshed == 0
        flags[0] = True  # the project's files changed: refresh now
        assert klass.check_workspace_freshness(fake, time.time()) > last
        assert (fake._grpc_server_registry.cleared, fake._workspace_process_context.refreshed) == (1, 1)
        flags[0] = False  # the interval passed
        assert klass.check_workspace_freshness(fake, time.time() - 601) > time.time() - 5
        assert fake._workspace_process_context.refreshed == 2
        # Setting it again wraps the stock method, not the previous wrapper.
        set_workspace_refresh(600, lambda: False)
        assert klass.check_workspace_freshness.__wrapped__ is stock_check  # type: ignore[attr-defined]
    finally:
        klass.check_workspace_freshness = stock_check  # type: ignore[method-assign]
        controller.RELOAD_WORKSPACE_INTERVAL = stock_interval


def test_project_change_is_seen_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "proj"
    (project / "agents").mkdir(parents=True)
    (project / "agentflow.yaml").write_text("name: p\n")
    monkeypatch.setenv("AGENTFLOW_PROJECT_DIR", str(project))
    changed = project_changed()
    assert changed() is False
    (project / "agents" / "a.yaml").write_text("name: a\n")
    assert changed() is True
    assert changed() is False  # once per change


def test_daemon_entry_point_is_the_stock_cli() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "agentflow_dagster.instance.daemon", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    assert "run" in out.stdout and "liveness-check" in out.stdout


def test_idle_ping_replaces_a_dead_connection_and_skips_fresh_ones(pg_url: str) -> None:
    """ping_when_idle: a connection idle past the threshold whose backend died is replaced at checkout;
    one used a moment ago is handed out unpinged (its death shows on the next statement)."""
    import time

    from agentflow_dagster.db import make_engine

    engine = make_engine(pg_url, pool_size=1, max_overflow=0)
    admin = make_engine(pg_url, isolation_level="AUTOCOMMIT")

    def backend_pid() -> int:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())

    def kill(pid: int) -> None:
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})

    try:
        first = backend_pid()
        assert backend_pid() == first, "pooled: the same backend serves the next checkout"
        kill(first)
        time.sleep(1.2)  # past IDLE_PING_SECONDS: the checkout pings, fails, reconnects
        second = backend_pid()
        assert second != first

        kill(second)
        with pytest.raises(sa.exc.OperationalError):
            backend_pid()  # used a moment ago: not pinged, the statement meets the dead backend
        assert backend_pid() not in (first, second), "the pool dropped it and reconnected"
    finally:
        engine.dispose()
        admin.dispose()


CAPTURE_SCRIPT = """
import os, subprocess, sys
import psutil
from agentflow_dagster.instance.compute_logs import RedirectComputeLogManager

manager = RedirectComputeLogManager(sys.argv[1])
key = ["run-1", "compute_logs", "all"]
with manager.capture_logs(key):
    children = psutil.Process(os.getpid()).children(recursive=True)
    print("from python", flush=True)
    subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('from a child')"], check=True)
print("after capture:", len(children), manager.is_capture_complete(key), flush=True)
"""


def test_redirect_compute_logs_capture_without_mirror_processes(tmp_path: Path) -> None:
    """The capture writes what the process (and its children) print to the log files, and starts no
    `tail`/watcher process, unlike the stock LocalComputeLogManager. Run in a child process: pytest
    holds this process's stdout and stderr."""
    from agentflow_dagster.instance.compute_logs import RedirectComputeLogManager

    base = tmp_path / "logs"
    out = subprocess.run(
        [sys.executable, "-c", CAPTURE_SCRIPT, str(base)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "after capture: 0 True\n", "nothing mirrored back; no child during the capture"
    manager = RedirectComputeLogManager(str(base))
    data = manager.get_log_data(["run-1", "compute_logs", "all"])
    assert data.stdout == b"from python\n" and data.stderr == b"from a child"


def test_redirect_compute_logs_default_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from agentflow_dagster.instance.compute_logs import RedirectComputeLogManager

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    assert RedirectComputeLogManager()._base_dir == str(tmp_path / "storage")
    # No home: a Dagster CLI's temporary instance in a checkout (`dagster dev`), next to its SQLite storage.
    monkeypatch.delenv("DAGSTER_HOME")
    monkeypatch.setenv("AGENTFLOW_DATA_DIR", str(tmp_path / "data"))
    assert RedirectComputeLogManager()._base_dir == str(tmp_path / "data" / "dagster_dev" / "storage")


def _reflections(monkeypatch: pytest.MonkeyPatch, action: Callable[[], object], n: int = 10) -> int:
    """Schema reflection calls (table list, column list) made by n calls of `action`, after a warm one."""
    from sqlalchemy.engine.reflection import Inspector

    action()
    count = {"n": 0}
    for name in ("get_table_names", "get_columns"):
        original = getattr(Inspector, name)

        def counted(self: Inspector, *args: object, _original: Callable = original, **kw: object) -> object:
            count["n"] += 1
            return _original(self, *args, **kw)

        monkeypatch.setattr(Inspector, name, counted)
    try:
        for _ in range(n):
            action()
    finally:
        monkeypatch.undo()
    return count["n"]


def test_schema_checks_are_cached_once_true(
    dagster_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What every sensor tick and run event does: the pooled storage reflects the schema once, the
    stock storage on every call (several catalog queries each time)."""
    pooled_cfg = {
        "custom": {
            "module": "agentflow_dagster.instance.storage",
            "class": "PooledPostgresStorage",
            "config": {"postgres_url": dagster_db},
        }
    }
    stock_cfg = {"postgres": {"postgres_url": dagster_db}}
    with (
        _instance(tmp_path / "pooled", pooled_cfg) as pooled,
        _instance(tmp_path / "stock", stock_cfg) as stock,
    ):
        for inst in (pooled, stock):
            inst.create_run_for_job(_job())
        for action in ("all_instigator_state", "get_run_records"):
            ours = _reflections(monkeypatch, getattr(pooled, action))
            theirs = _reflections(monkeypatch, getattr(stock, action))
            assert ours == 0 and theirs >= 10, (action, ours, theirs)
