"""Dagster's Postgres storage, with a connection pool instead of one new connection per statement.

dagster-postgres opens every storage engine with `NullPool` (only the webserver switches to a pool):
each event write, run query and tick update connects anew, and Postgres forks a backend for it. On a
2-core host that was ~2.5 ms of wall time and ~2 ms of server CPU per statement, ~40+ times per
workflow run plus the daemons' polling. Here the run, event log and schedule storages of one process
share one pooled engine; a connection idle for a second or more is pinged before use
(`agentflow_dagster.db.ping_when_idle`), so a Postgres restart costs a reconnect, not an error.
Tables are still created by the stock classes when missing; the check runs once per process and URL.

`postgres_url: {env: VAR}` is resolved here rather than by Dagster's config layer, so an unset variable
is reported in one line instead of a config traceback: with DAGSTER_HOME set (the stack, compose,
Kubernetes) it is an error naming `agentflow up` and the variable; without DAGSTER_HOME, i.e. a Dagster
CLI's temporary instance in a checkout (`dagster dev`, `dagster definitions validate`), the instance
uses Dagster's default SQLite storage under `$AGENTFLOW_DATA_DIR/dagster_dev` and says so.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import click
import dagster as dg
from dagster._core.events import ASSET_CHECK_EVENTS, ASSET_EVENTS
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.base_storage import DagsterStorage
from dagster._core.storage.config import pg_config
from dagster._core.storage.event_log import SqlEventLogStorageTable
from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.run_storage import PostgresRunStorage
from dagster_postgres.schedule_storage import PostgresScheduleStorage
from dagster_postgres.utils import create_pg_engine, get_token_provider_from_config, pg_url_from_config

from agentflow_dagster.db import ping_when_idle
from agentflow_dagster.per_process import PerProcess

log = logging.getLogger("agentflow.instance")
_warned = False

_checked: set[str] = set()
_checked_lock = threading.Lock()
_tables_known = False


def assume_tables_exist() -> None:
    """This process's launcher has already opened the storage (so created any missing tables): skip
    the table checks (a few catalog queries per storage). Called by the warm launcher's run workers."""
    global _tables_known
    _tables_known = True


_pools: PerProcess[Any] = PerProcess()


def _pool_for(
    url: str, token_provider: Any, pool_size: int, max_overflow: int, pool_recycle: int
) -> tuple[Any, bool]:
    """(engine, shared): one pooled engine per process and URL for every instance the process opens.

    Dagster opens a new instance from its ref for each sensor tick in the code server (and each
    evaluation of a run-status sensor): with an engine per instance every tick connected anew, and
    Postgres forked a backend for it, ~10 CPU-s a minute on an idle stack (bench/idle_bench.py,
    docs/performance.md). Keyed by pid: a forked process never uses its parent's connections. With a
    token provider (rotating credentials) each instance keeps its own engine, as before."""
    kwargs: dict[str, Any] = {
        "isolation_level": "AUTOCOMMIT", "pool_size": pool_size, "max_overflow": max_overflow,
        "pool_recycle": pool_recycle,
    }  # fmt: skip
    if token_provider is not None:
        return ping_when_idle(create_pg_engine(url, token_provider, **kwargs)), False
    key = (url, pool_size, max_overflow, pool_recycle)
    return _pools.get(key, lambda: ping_when_idle(create_pg_engine(url, None, **kwargs))), True


class PooledPostgresStorage(DagsterPostgresStorage):
    """`DagsterPostgresStorage` whose three storages share one pooled SQLAlchemy engine, the same for
    every instance of the process on that database (`_pool_for`)."""

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider: Any = None,
        *,
        pool_size: int = 2,
        max_overflow: int = 20,
        pool_recycle: int = 3600,
    ):
        if pool_size < 1 or max_overflow < 0 or pool_recycle < 1:
            raise ValueError(
                f"PooledPostgresStorage: pool_size must be >= 1 (got {pool_size}), max_overflow >= 0 "
                f"(got {max_overflow}), pool_recycle >= 1 s (got {pool_recycle})"
            )
        with _checked_lock:
            # Dagster builds this class three times per instance (one per storage kind); one table
            # check per process and database is enough.
            check_tables = should_autocreate_tables and not _tables_known and postgres_url not in _checked
        self.postgres_url = postgres_url
        self.should_autocreate_tables = should_autocreate_tables
        self._inst_data = inst_data
        self.pool_size, self.max_overflow, self.pool_recycle = pool_size, max_overflow, pool_recycle
        pool = (pool_size, max_overflow, pool_recycle)
        engine, self._shared_pool = _pool_for(postgres_url, token_provider, *pool)
        kw = {"token_provider": token_provider}
        self._run_storage = _PooledRunStorage(postgres_url, check_tables, **kw)
        self._event_log_storage = _PooledEventLogStorage(postgres_url, check_tables, **kw)
        self._schedule_storage = _PooledScheduleStorage(postgres_url, check_tables, **kw)
        for storage in (self._run_storage, self._event_log_storage, self._schedule_storage):
            # The stock constructors made NullPool engines, which hold no connection: swap in the pool.
            storage._engine = engine
            storage._agentflow_shared_pool = self._shared_pool
        self._pooled = engine
        if check_tables:
            with _checked_lock:
                _checked.add(postgres_url)
        DagsterStorage.__init__(self)  # type: ignore[arg-type]

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {
            **cast(Mapping[str, Any], pg_config()),
            # A URL or {env: VAR}, resolved in from_config_value (see the module docstring).
            "postgres_url": dg.Field(dg.Any, is_required=False),
            "pool_size": dg.Field(int, is_required=False, default_value=2),
            "max_overflow": dg.Field(int, is_required=False, default_value=20),
            "pool_recycle": dg.Field(int, is_required=False, default_value=3600),
        }

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> DagsterStorage:
        url = config_value.get("postgres_url")
        if isinstance(url, Mapping):
            variable = str(url.get("env", ""))
            if not variable or set(url) != {"env"}:
                raise click.ClickException(f"storage postgres_url {dict(url)!r}: give a URL or {{env: VAR}}")
            if not os.environ.get(variable):
                return _without_postgres_url(variable)
            config_value = {**config_value, "postgres_url": os.environ[variable]}
        return cls(
            pg_url_from_config(config_value),
            config_value.get("should_autocreate_tables", True),
            inst_data=inst_data,
            token_provider=get_token_provider_from_config(config_value),
            pool_size=config_value.get("pool_size", 2),
            max_overflow=config_value.get("max_overflow", 20),
            pool_recycle=config_value.get("pool_recycle", 3600),
        )


def _without_postgres_url(variable: str) -> DagsterStorage:
    """The instance's storage when its Postgres URL variable is unset (see the module docstring)."""
    if os.environ.get("DAGSTER_HOME"):
        # ClickException: the Dagster CLIs print this one line (no traceback) and exit 1.
        raise click.ClickException(
            f"{variable} is not set, and $DAGSTER_HOME/dagster.yaml keeps Dagster's runs in Postgres: "
            f"start the local stack with `agentflow up` (it sets {variable} for Dagster's processes), "
            f"or export {variable}=postgresql+psycopg2://USER@HOST:PORT/DB"
        )
    from dagster._core.storage.sqlite_storage import DagsterSqliteStorage

    global _warned
    base = checkout_instance_dir()
    if not _warned:  # once per process, not once per storage kind
        _warned = True
        log.warning(
            "%s is not set and DAGSTER_HOME is unset: Dagster's SQLite storage in %s (for `dagster dev` "
            "or `dagster definitions validate` in a checkout; `agentflow up` runs the Postgres-backed "
            "stack)",
            variable,
            base,
        )
    return DagsterSqliteStorage.from_local(str(base))


def checkout_instance_dir() -> Path:
    """Where a Dagster CLI's temporary instance in a checkout (no DAGSTER_HOME) keeps its state."""
    from agentflow_dagster.settings import Settings

    return Settings().data_path / "dagster_dev"


_true_checks: dict[tuple[int, Any, str], set[Any]] = {}


def _once_true(check: Callable[..., bool], *, by_arg: bool = False) -> Callable[..., bool]:
    """Cache a schema check once it holds: a column, table or built index that exists does not go
    away while the process lives, and a False is asked again (a migration may add it). The cache key
    is the method (by_arg: and its one argument, e.g. a migration name; a connection is not a key)."""
    attr = f"_agentflow_true_{check.__name__}"

    def cached(self: Any, *args: Any) -> bool:
        # Per process and database, not per storage object: the code server opens an instance a tick.
        known = _true_checks.setdefault((os.getpid(), getattr(self, "postgres_url", id(self)), attr), set())
        key = args[0] if by_arg else None
        if key in known:
            return True
        result = check(self, *args)
        if result:
            known.add(key)
        return result

    cached.__name__ = check.__name__
    return cached


class _DisposesPool:
    """Closes the pool when Dagster disposes the storage (DagsterInstance.dispose), unless the pool is
    the process's shared one, which later instances reuse."""

    _engine: Any
    _agentflow_shared_pool: bool = False

    def dispose(self) -> None:
        super().dispose()  # type: ignore[misc]
        if not self._agentflow_shared_pool:
            self._engine.dispose()


class _PooledRunStorage(_DisposesPool, PostgresRunStorage):
    # The stock class reflects the `runs` columns (several catalog queries) on every run-level event
    # and every get_run_records call: what the daemons and each run worker do most.
    has_run_stats_index_cols = _once_true(PostgresRunStorage.has_run_stats_index_cols)
    has_bulk_actions_selector_cols = _once_true(PostgresRunStorage.has_bulk_actions_selector_cols)
    has_backfill_id_column = _once_true(PostgresRunStorage.has_backfill_id_column)
    has_bulk_action_job_name_column = _once_true(PostgresRunStorage.has_bulk_action_job_name_column)
    has_backfill_tags_table = _once_true(PostgresRunStorage.has_backfill_tags_table)


class _PooledEventLogStorage(_DisposesPool, PostgresEventLogStorage):
    has_asset_key_index_cols = _once_true(PostgresEventLogStorage.has_asset_key_index_cols)

    def store_event(self, event: EventLogEntry) -> None:
        """The stock method without its `NOTIFY run_events` after every insert.

        dagster-postgres keeps the NOTIFY "to support version skew" only: its own event watcher
        polls, and nothing in Dagster LISTENs. Each step of a run stores ~6 events, and each NOTIFY was
        a second round trip and a commit through Postgres's one notification queue. Everything else
        (the insert, asset and asset-check indexing) is the stock method's."""
        insert = self.prepare_insert_event(event)
        with self._connect() as conn:
            event_id = int(conn.execute(insert.returning(SqlEventLogStorageTable.c.id)).scalar_one())
        dagster_event = event.dagster_event
        if dagster_event is None:
            return
        if dagster_event.event_type in ASSET_EVENTS and dagster_event.asset_key:
            with self.index_transaction() as conn:
                self._store_asset_event_tags(conn, [event], [event_id])
                self._store_asset_event(conn, event, event_id)
        if dagster_event.event_type in ASSET_CHECK_EVENTS:
            self.store_asset_check_event(event, event_id)


class _PooledScheduleStorage(_DisposesPool, PostgresScheduleStorage):
    # Every sensor tick reads and writes instigator state; the stock class reflects the table list
    # for each of those (twice) and queries the index table.
    has_instigators_table = _once_true(PostgresScheduleStorage.has_instigators_table)
    _has_instigators_table = _once_true(PostgresScheduleStorage._has_instigators_table)
    has_secondary_index_table = _once_true(PostgresScheduleStorage.has_secondary_index_table)
    has_built_index = _once_true(PostgresScheduleStorage.has_built_index, by_arg=True)
