"""Dagster instance pieces the platform configures in dagster.yaml (see docs/performance.md).

- `storage.PooledPostgresStorage`: Dagster's Postgres storage with pooled connections.
- `coordinator.FastQueuedRunCoordinator`: the queued run coordinator with a sub-second dequeue loop.
- `daemon`: `dagster-daemon` with a configurable sensor loop (Dagster's is fixed at 5 s).
"""
