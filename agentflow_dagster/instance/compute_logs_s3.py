"""S3ComputeLogManager (SeaweedFS locally, MinIO in compose) capturing like RedirectComputeLogManager."""

from __future__ import annotations

from typing import Any

from dagster_aws.s3.compute_log_manager import S3ComputeLogManager

from agentflow_dagster.instance.compute_logs import RedirectComputeLogManager


class RedirectS3ComputeLogManager(S3ComputeLogManager):
    """Same config and uploads as S3ComputeLogManager; the local capture has no mirror processes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._local_manager = RedirectComputeLogManager(self._local_manager._base_dir)
