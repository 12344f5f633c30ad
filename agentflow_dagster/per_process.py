"""One object per process and key (engines, pools, producers), built on first use and kept."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class PerProcess(Generic[V]):
    """A process-wide cache keyed by (pid, key): a forked child never uses its parent's sockets.

    Dagster builds resources and opens instances anew for every sensor tick and every run; a client
    per build opened a new connection each time (docs/performance.md). Values live as long as the
    process; `pop` hands one back to a caller that found it broken."""

    def __init__(self) -> None:
        self._values: dict[tuple[int, Hashable], V] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, build: Callable[[], V]) -> V:
        full = (os.getpid(), key)
        with self._lock:
            value = self._values.get(full)
            if value is None:
                value = self._values[full] = build()
            return value

    def pop(self, key: Hashable) -> V | None:
        with self._lock:
            return self._values.pop((os.getpid(), key), None)
