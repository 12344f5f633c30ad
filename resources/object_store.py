"""Object store resource: S3 (SeaweedFS locally, MinIO in production) through the `minio` client.

A local directory behind the same interface remains as an explicit opt-in (`local_dir`) for unit tests.
The clients themselves live in `agentflow_dagster.object_store` (no Dagster import, for the CLI).
"""

from __future__ import annotations

import dagster as dg
from pydantic import PrivateAttr

from agentflow_dagster.object_store import (
    LocalObjectStore,
    MinioObjectStore,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    build_store,
    validate_key,
)

__all__ = ["LocalObjectStore", "MinioObjectStore", "ObjectInfo", "ObjectNotFound", "ObjectStore",
           "ObjectStoreError", "ObjectStoreResource", "validate_key"]  # fmt: skip


class ObjectStoreResource(dg.ConfigurableResource):
    """S3 at `endpoint`; keys given, or read from `credentials_file` (the embedded server's generated keys).

    `local_dir` without an endpoint is the explicit opt-in for a directory instead of S3.
    """

    endpoint: str = ""
    access_key: str = ""
    secret_key: str = ""
    credentials_file: str = ""
    secure: bool = False
    local_dir: str = ""

    _store: ObjectStore | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._store = self.build()

    def build(self) -> ObjectStore:
        return build_store(
            self.endpoint,
            self.access_key,
            self.secret_key,
            self.credentials_file,
            self.secure,
            self.local_dir,
        )

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            self._store = self.build()
        return self._store
