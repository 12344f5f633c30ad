"""A real SeaweedFS S3 server for tests: free loopback ports below 55535, stopped by pid, restartable."""

from __future__ import annotations

from pathlib import Path

from agentflow_dagster import names
from agentflow_dagster.stack import services
from resources.object_store import ObjectStore, ObjectStoreResource


class SeaweedServer:
    """`agentflow up`'s SeaweedFS (same start code) on its own data folder; stop() then start() keeps data."""

    def __init__(self, data_dir: Path, port: int | None = None):
        self.data_dir = data_dir
        self.port = port or services.free_seaweed_port()
        self.pid: int | None = None

    def start(self) -> SeaweedServer:
        self.pid = services.start_seaweedfs(self.data_dir, self.port).pid
        return self

    def stop(self) -> None:
        if self.pid is not None:
            services.stop_seaweedfs(self.pid)
            self.pid = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def credentials(self) -> services.S3Credentials:
        creds = services.load_s3_credentials(self.data_dir)
        assert creds is not None, f"SeaweedFS never started in {self.data_dir}"
        return creds

    def resource(self) -> ObjectStoreResource:
        """The resource as the platform builds it for the embedded server (keys from the file)."""
        return ObjectStoreResource(
            endpoint=self.endpoint,
            credentials_file=str(services.s3_credentials_path(self.data_dir)),
        )

    def store(self, buckets: tuple[str, ...] = names.BUCKETS) -> ObjectStore:
        store = self.resource().build()
        for bucket in buckets:
            store.ensure_bucket(bucket)
        return store
