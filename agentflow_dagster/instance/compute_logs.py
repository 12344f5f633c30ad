"""Compute log capture without the per-run mirror processes.

Dagster's LocalComputeLogManager mirrors a run's stdout and stderr: for each of the two it starts
`tail -F` and a fresh Python interpreter that watches for orphans, so every run of the in-process
executor paid two interpreter start-ups (~50 ms of CPU each here) to copy its output back to the
launching process's stdout. These managers keep the capture (the files the Dagster UI shows, and,
for S3, their upload) and drop the mirror: a run's output goes to its compute log files only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import dagster as dg
from dagster._core.execution.compute_logs import redirect_to_file
from dagster._core.storage.compute_log_manager import CapturedLogContext, ComputeIOType
from dagster._core.storage.local_compute_log_manager import (
    IO_TYPE_EXTENSION,
    LocalComputeLogManager,
)
from dagster._serdes import ConfigurableClassData
from dagster._utils import ensure_file, touch_file


def default_base_dir() -> str:
    """Where Dagster's default LocalComputeLogManager writes: $DAGSTER_HOME/storage (without
    DAGSTER_HOME, i.e. `dagster dev` in a checkout: next to that instance's SQLite storage)."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        from agentflow_dagster.instance.storage import checkout_instance_dir

        return str(checkout_instance_dir() / "storage")
    return os.path.join(home, "storage")


class RedirectComputeLogManager(LocalComputeLogManager):
    """LocalComputeLogManager whose capture redirects stdout/stderr to the log files, unmirrored."""

    def __init__(
        self,
        base_dir: str | None = None,
        polling_timeout: float | None = None,
        inst_data: ConfigurableClassData | None = None,
    ):
        super().__init__(base_dir or default_base_dir(), polling_timeout=polling_timeout, inst_data=inst_data)

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {
            "base_dir": dg.Field(dg.StringSource, is_required=False),
            "polling_timeout": dg.Field(float, is_required=False),
        }

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> RedirectComputeLogManager:
        return cls(inst_data=inst_data, **config_value)

    @contextmanager
    def capture_logs(self, log_key: Sequence[str]) -> Iterator[CapturedLogContext]:
        outpath = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDOUT])
        errpath = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDERR])
        ensure_file(outpath)
        ensure_file(errpath)
        with redirect_to_file(sys.stdout, outpath), redirect_to_file(sys.stderr, errpath):
            yield CapturedLogContext(log_key)
        # Like the stock manager: the artifact marks the capture as complete.
        touch_file(self.complete_artifact_path(log_key))
