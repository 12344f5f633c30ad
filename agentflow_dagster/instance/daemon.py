"""`dagster-daemon` with the sensor loop of `AGENTFLOW_SENSOR_LOOP_SECONDS` (default 0.5 s).

Dagster's sensor daemon wakes at most every 5 s (`MIN_INTERVAL_LOOP_TIME` in
`dagster._daemon.sensor`, not configurable), whatever a sensor's `minimum_interval_seconds`: an event
then waits 0-5 s (2.5 s on average) before the request sensor even looks for it. This entry point sets
that loop time, then runs the stock daemon CLI unchanged:

    python -m agentflow_dagster.instance.daemon run -w workspace.yaml

Each loop is one read of the sensor states; a sensor still ticks only when its own minimum interval
has passed. The constant is private to Dagster: `set_sensor_loop` fails loudly if a Dagster upgrade
removes it, rather than silently running the 5 s loop.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


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


def main(argv: Sequence[str] | None = None) -> None:
    from dagster._daemon.cli import main as daemon_main

    from agentflow_dagster.settings import get_settings

    set_sensor_loop(get_settings().sensor_loop_seconds)
    sys.argv = ["dagster-daemon", *(sys.argv[1:] if argv is None else argv)]
    daemon_main()


if __name__ == "__main__":
    main()
