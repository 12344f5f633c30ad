"""Redis (hot state): locks, idempotency keys, rate limits, caches."""

from __future__ import annotations

import dagster as dg
import redis as redis_lib
from redis.driver_info import DriverInfo

from agentflow_dagster.per_process import PerProcess

# redis-py reads its own version from the package metadata for every new connection (~1-3 ms of CPU
# each, in every run worker's first task); resolved once per process instead, before the forkserver
# forks its workers.
DRIVER_INFO = DriverInfo()
# One client (and its connection pool) per process and address, as for the Postgres engines: Dagster
# builds the resource for every run and sensor tick, and a client per build connected anew each time.
_CLIENTS: PerProcess[redis_lib.Redis] = PerProcess()


class RedisResource(dg.ConfigurableResource):
    """A `redis.Redis` client shared by every build of this resource in the process (`build` makes a
    client of its own, for a caller that closes it)."""

    url: str = "redis://127.0.0.1:6379/0"
    socket_timeout: float = 2.0

    def build(self) -> redis_lib.Redis:
        return redis_lib.Redis.from_url(
            self.url,
            socket_timeout=self.socket_timeout,
            socket_connect_timeout=self.socket_timeout,
            driver_info=DRIVER_INFO,
        )

    def warm(self) -> None:
        """Open a pooled connection of the shared client now (a standby run worker, before its run)."""
        self.client.ping()

    @property
    def client(self) -> redis_lib.Redis:
        """The process's client for this address (kept open: never closed by a run's teardown)."""
        return _CLIENTS.get((self.url, self.socket_timeout), self.build)
