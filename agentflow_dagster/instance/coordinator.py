"""The queued run coordinator with a dequeue loop shorter than Dagster's whole-second minimum."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, cast

import dagster as dg
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._serdes import ConfigurableClassData

# Set by every run this process submits to the queue: the run queue daemon of the same process
# (`agentflow_dagster.instance.daemon`, where the sensors submit their runs) wakes on it.
_submitted = threading.Event()


def wait_for_submit(timeout: float) -> bool:
    """Wait up to `timeout` s for a run submitted by this process; True when one was. Clears the flag."""
    woke = _submitted.wait(timeout)
    _submitted.clear()  # a run submitted from here on sets it again: the next wait returns at once
    return woke


class FastQueuedRunCoordinator(QueuedRunCoordinator):
    """`QueuedRunCoordinator` plus `dequeue_interval_ms`: how often the run queue daemon dequeues.

    Dagster's `dequeue_interval_seconds` is an integer (default 5, at least 1): a run queued on an idle
    instance waits half of it on average before it is launched. Every other setting (limits, tag
    limits, threads, workers, retries) is the stock coordinator's; `dequeue_interval_ms`, when set,
    replaces `dequeue_interval_seconds`.
    """

    def __init__(self, *args: Any, dequeue_interval_ms: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._set_dequeue_interval_ms(dequeue_interval_ms)

    def _set_dequeue_interval_ms(self, dequeue_interval_ms: int | None) -> None:
        if dequeue_interval_ms is not None and not 50 <= dequeue_interval_ms <= 60_000:
            raise ValueError(
                f"FastQueuedRunCoordinator: dequeue_interval_ms must be 50..60000, got {dequeue_interval_ms}"
            )
        self._dequeue_interval_ms = dequeue_interval_ms

    def submit_run(self, context: Any) -> dg.DagsterRun:
        run = super().submit_run(context)
        _submitted.set()  # stored as QUEUED: the dequeue loop of this process may launch it now
        return run

    @property
    def dequeue_interval_seconds(self) -> float:  # type: ignore[override]
        if self._dequeue_interval_ms is None:
            return super().dequeue_interval_seconds
        return self._dequeue_interval_ms / 1000

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {
            **cast(Mapping[str, Any], QueuedRunCoordinator.config_type()),
            "dequeue_interval_ms": dg.Field(
                int,
                is_required=False,
                description="Dequeue loop in ms (50..60000); replaces dequeue_interval_seconds.",
            ),
        }

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> FastQueuedRunCoordinator:
        # The stock method builds `cls` from every stock field; only the ms field is ours.
        coordinator = super().from_config_value(inst_data, config_value)
        coordinator._set_dequeue_interval_ms(config_value.get("dequeue_interval_ms"))
        return coordinator
