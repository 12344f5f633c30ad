"""`dagster-daemon` with the sensor loop of `AGENTFLOW_SENSOR_LOOP_SECONDS` (default 0.5 s).

Dagster's sensor daemon wakes at most every 5 s (`MIN_INTERVAL_LOOP_TIME` in
`dagster._daemon.sensor`, not configurable), whatever a sensor's `minimum_interval_seconds`: an event
then waits 0-5 s (2.5 s on average) before the request sensor even looks for it. This entry point sets
that loop time, then runs the stock daemon CLI unchanged:

    python -m agentflow_dagster.instance.daemon run -w workspace.yaml

Each loop is one read of the sensor states; a sensor still ticks only when its own minimum interval
has passed. The constant is private to Dagster: `set_sensor_loop` fails loudly if a Dagster upgrade
removes it, rather than silently running the 5 s loop.

It also changes when the daemon replaces its code server. Stock Dagster does it every 60 s
(`RELOAD_WORKSPACE_INTERVAL` in `dagster._daemon.controller`): a new `dagster api grpc` process that
imports Dagster, the package and the project (listing its MCP servers' tools) whether or not anything
changed, several CPU-seconds a minute on an idle stack (docs/performance.md). Here the refresh happens
when the project's files change (checked on the controller's 5 s loop, so a project edit reaches the
sensors within ~5 s instead of up to 60 s) and otherwise every `AGENTFLOW_WORKSPACE_REFRESH_SECONDS`
(default 3600).

And the run queue daemon launches a queued run as soon as this process queued it. Stock Dagster
dequeues on its interval, which it waits in 0.5 s steps: a run the request sensor queued on an idle
stack waited ~0.25-0.5 s before its launch. Here the loop waits for the coordinator's "run submitted"
signal (`coordinator.wait_for_submit`), at most the dequeue interval (at least 0.5 s, as before), so a
slot freed by a finished run is still found on that interval. (Looking every 0.1 s while runs wait
for a slot cost more daemon CPU than it gained: 95 vs 120 workflows/min on a 30-event burst.)
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Sequence
from typing import Any


def set_sensor_loop(seconds: float) -> float:
    """Set the sensor daemon's loop time in this process; returns the previous value."""
    import dagster._daemon.sensor as sensor_daemon

    if not 0 < seconds <= 5:
        raise ValueError(f"sensor loop must be within (0, 5] seconds, got {seconds}")
    previous = getattr(sensor_daemon, "MIN_INTERVAL_LOOP_TIME", None)
    if not isinstance(previous, int | float):
        raise RuntimeError(
            "dagster._daemon.sensor.MIN_INTERVAL_LOOP_TIME is gone (Dagster upgrade?): "
            "the sensor loop cannot be set; run the stock `dagster-daemon` instead"
        )
    sensor_daemon.MIN_INTERVAL_LOOP_TIME = seconds  # type: ignore[assignment]
    return float(previous)


def set_workspace_refresh(seconds: float, changed: Callable[[], bool]) -> float:
    """Refresh the daemon's workspace every `seconds`, or as soon as `changed()` says so.

    Returns the previous interval. Fails loudly when the private names it relies on are gone."""
    import dagster._daemon.controller as controller

    previous = getattr(controller, "RELOAD_WORKSPACE_INTERVAL", None)
    klass = getattr(controller, "DagsterDaemonController", None)
    check = getattr(klass, "check_workspace_freshness", None)
    if not isinstance(previous, int | float) or check is None:
        raise RuntimeError(
            "dagster._daemon.controller.RELOAD_WORKSPACE_INTERVAL or check_workspace_freshness is gone "
            "(Dagster upgrade?): the workspace refresh cannot be set; run the stock `dagster-daemon`"
        )
    stock = getattr(check, "__wrapped__", check)
    controller.RELOAD_WORKSPACE_INTERVAL = seconds  # type: ignore[assignment]

    def check_workspace_freshness(self: object, last_workspace_update_time: float) -> float:
        if changed():
            last_workspace_update_time = float("-inf")  # older than any interval: refresh now
        return stock(self, last_workspace_update_time)

    check_workspace_freshness.__wrapped__ = stock  # type: ignore[attr-defined]
    klass.check_workspace_freshness = check_workspace_freshness  # type: ignore[union-attr]
    return float(previous)


def set_dequeue_wake() -> None:
    """Run queue daemon: iterate as soon as a run is queued in this process, else every interval."""
    from dagster._daemon.run_coordinator import queued_run_coordinator_daemon as queue_daemon

    from agentflow_dagster.instance.coordinator import wait_for_submit

    klass = queue_daemon.QueuedRunCoordinatorDaemon
    stock_init, stock_iteration = klass.__init__, klass.run_iteration
    if getattr(stock_iteration, "__wrapped__", None) is not None:
        return  # already set in this process
    if "interval_seconds" not in inspect.signature(stock_init).parameters:
        raise RuntimeError(
            "QueuedRunCoordinatorDaemon(interval_seconds) changed (Dagster upgrade?): "
            "the dequeue wake cannot be set; run the stock `dagster-daemon`"
        )

    def __init__(self: Any, interval_seconds: float, *args: Any, **kwargs: Any) -> None:
        # The stock loop's own wait is skipped (interval 0): run_iteration below does the waiting.
        stock_init(self, 0, *args, **kwargs)
        self.agentflow_idle_seconds = max(float(interval_seconds), 0.5)

    def run_iteration(self: Any, context: Any, fixed_iteration_time: float | None = None) -> Any:
        if fixed_iteration_time is None:
            wait_for_submit(self.agentflow_idle_seconds)
        yield from stock_iteration(self, context, fixed_iteration_time)

    run_iteration.__wrapped__ = stock_iteration  # type: ignore[attr-defined]
    klass.__init__ = __init__  # type: ignore[method-assign]
    klass.run_iteration = run_iteration  # type: ignore[method-assign,assignment]


def project_changed() -> Callable[[], bool]:
    """A check that is true once each time the served project's files differ from the last look."""
    from agentflow_dagster.project import project_dir
    from agentflow_dagster.project.loader import fingerprint

    def digest() -> str | None:
        try:
            return fingerprint(project_dir())[0]
        except OSError:
            return None

    seen = [digest()]

    def changed() -> bool:
        now = digest()
        if now == seen[0]:
            return False
        seen[0] = now
        return True

    return changed


def main(argv: Sequence[str] | None = None) -> None:
    from dagster._daemon.cli import main as daemon_main

    from agentflow_dagster.settings import get_settings

    settings = get_settings()
    set_sensor_loop(settings.sensor_loop_seconds)
    set_workspace_refresh(settings.workspace_refresh_seconds, project_changed())
    if settings.dequeue_on_submit:
        set_dequeue_wake()
    sys.argv = ["dagster-daemon", *(sys.argv[1:] if argv is None else argv)]
    daemon_main()


if __name__ == "__main__":
    main()
