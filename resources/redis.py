"""Redis (hot state): locks, idempotency keys, rate limits, caches."""

from __future__ import annotations

import dagster as dg
import redis as redis_lib
from pydantic import PrivateAttr
from redis.driver_info import DriverInfo

# redis-py reads its own version from the package metadata for every new connection (~1-3 ms of CPU
# each, in every run worker's first task); resolved once per process instead, before the forkserver
# forks its workers.
DRIVER_INFO = DriverInfo()


class RedisResource(dg.ConfigurableResource):
    """A `redis.Redis` client built in `setup_for_execution` and closed after."""

    url: str = "redis://127.0.0.1:6379/0"
    socket_timeout: float = 2.0

    _client: redis_lib.Redis | None = PrivateAttr(default=None)

    def build(self) -> redis_lib.Redis:
        return redis_lib.Redis.from_url(
            self.url,
            socket_timeout=self.socket_timeout,
            socket_connect_timeout=self.socket_timeout,
            driver_info=DRIVER_INFO,
        )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._client = self.build()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def client(self) -> redis_lib.Redis:
        if self._client is None:
            self._client = self.build()
        return self._client
