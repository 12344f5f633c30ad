"""A real `agentflow up` stack on free loopback ports for end-to-end and chaos tests, stopped by pid."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import psutil
import sqlalchemy as sa
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from agentflow_dagster import names
from agentflow_dagster.db import make_engine
from agentflow_dagster.events import DeadLetter, WorkflowRequest, WorkflowResult
from agentflow_dagster.stack.services import free_port, free_seaweed_port, pid_alive

AGENTFLOW = [sys.executable, "-m", "agentflow_dagster"]
PARTITIONS = 4


@dataclass
class LiveStack:
    """One data directory, its ports and the environment every `agentflow` command of the test gets."""

    data_dir: Path
    ports: dict[str, int]
    env: dict[str, str]
    # Processes a killed component left behind (a killed daemon's code server): reaped at teardown.
    orphans: list[int] = field(default_factory=list)
    _engine: sa.Engine | None = None

    @classmethod
    def create(cls, data_dir: Path, **extra_env: str) -> LiveStack:
        """A stack description with free ports; the caller's AGENTFLOW_* and OpenAI settings are dropped."""
        ports = {k: free_port() for k in ("postgres", "redis", "kafka", "webserver", "metrics")}
        ports["s3"] = free_seaweed_port()  # SeaweedFS: 4 ports from here, each + 10000 for gRPC
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AGENTFLOW_", "OPENAI_", "OTEL_", "DAGSTER_HOME"))
        }
        env.update(
            AGENTFLOW_DATA_DIR=str(data_dir),
            AGENTFLOW_POSTGRES_PORT=str(ports["postgres"]),
            AGENTFLOW_REDIS_PORT=str(ports["redis"]),
            AGENTFLOW_KAFKA_PORT=str(ports["kafka"]),
            AGENTFLOW_WEBSERVER_PORT=str(ports["webserver"]),
            AGENTFLOW_METRICS_PORT=str(ports["metrics"]),
            AGENTFLOW_S3_PORT=str(ports["s3"]),
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            **extra_env,
        )
        return cls(data_dir, ports, env)

    # --- lifecycle ------------------------------------------------------------------------------
    def cli(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*AGENTFLOW, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def up(self) -> None:
        """`agentflow up`: starts what is not running (so it also restarts a killed component)."""
        done = self.cli("up")
        assert done.returncode == 0, done.stdout + done.stderr

    def down(self) -> None:
        """`agentflow down`, then the orphans of killed components, by pid."""
        if self._engine is not None:
            self._engine.dispose()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.cli("down", timeout=120)
        for pid in self.orphans + [p.pid for p in self._strays()]:
            kill_tree(pid)

    def _strays(self) -> list[psutil.Process]:
        """Processes still naming this data directory (code servers carry its instance ref)."""
        found = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            with contextlib.suppress(psutil.Error):
                if str(self.data_dir) in " ".join(proc.info["cmdline"] or []):
                    found.append(proc)
        return found

    def pids(self) -> dict[str, int]:
        state = json.loads((self.data_dir / "stack.json").read_text())
        return {k: v["pid"] for k, v in state["services"].items() if v.get("managed")}

    def kill(self, component: str) -> int:
        """SIGKILL one component by its recorded pid; its children stay (they are what a crash leaves)."""
        pid = self.pids()[component]
        proc = psutil.Process(pid)
        self.orphans.extend(c.pid for c in proc.children(recursive=True))
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid), 10, f"{component} pid {pid} to die")
        return pid

    # --- addresses ------------------------------------------------------------------------------
    @property
    def pg_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.ports['postgres']}/agentflow"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports['kafka']}"

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            self._engine = make_engine(self.pg_url, pool_pre_ping=True)
        return self._engine

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params))

    @contextlib.contextmanager
    def instance(self) -> Iterator[dg.DagsterInstance]:
        """The stack's Dagster instance (its dagster.yaml reads the storage URL from the environment)."""
        key = "AGENTFLOW_DAGSTER_POSTGRES_URL"
        saved = os.environ.get(key)
        os.environ[key] = self.pg_url.replace("postgresql://", "postgresql+psycopg2://", 1)
        try:
            inst = dg.DagsterInstance.from_config(str(self.data_dir / "dagster_home"))
        finally:
            if saved is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = saved
        try:
            yield inst
        finally:
            inst.dispose()

    def runs_by_event(self, event_ids: list[str]) -> dict[str, list[dg.DagsterRun]]:
        """Dagster runs per event id (tag agentflow/event_id)."""
        with self.instance() as inst:
            runs = inst.get_runs(filters=dg.RunsFilter(tags={names.TAG_EVENT_ID: event_ids}))
        out: dict[str, list[dg.DagsterRun]] = {e: [] for e in event_ids}
        for run in runs:
            out[run.tags[names.TAG_EVENT_ID]].append(run)
        return out

    def history(self, event_ids: list[str]) -> dict[str, str]:
        """workflow_runs status per event id."""
        found = self.rows(
            "SELECT event_id, status FROM workflow_runs WHERE event_id = ANY(:e)", e=list(event_ids)
        )
        return {r.event_id: r.status for r in found}

    # --- Kafka ----------------------------------------------------------------------------------
    def produce(self, records: list[tuple[int, bytes, list[tuple[str, bytes]] | None]]) -> None:
        """Send (partition, value, headers) records and wait for every ack."""
        producer = KafkaProducer(bootstrap_servers=[self.bootstrap], acks="all", request_timeout_ms=10_000)
        try:
            for partition, value, headers in records:
                producer.send(
                    names.TOPIC_REQUESTS, value=value, partition=partition, headers=headers or []
                ).get(timeout=15)
        finally:
            producer.close(timeout=5)

    def read_topic(
        self, topic: str, done: Callable[[list[bytes]], bool], timeout: float, settle_s: float = 1.0
    ) -> list[bytes]:
        """Every value of `topic` from offset 0, polled until `done(values)` holds (then `settle_s` more)."""
        consumer = KafkaConsumer(
            bootstrap_servers=[self.bootstrap],
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            request_timeout_ms=10_000,
            fetch_max_wait_ms=100,
        )
        values: list[bytes] = []
        try:
            tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            consumer.assign(tps)
            for tp in tps:
                consumer.seek(tp, 0)
            deadline = time.monotonic() + timeout
            settled_at: float | None = None
            # The first polls after a seek often return nothing: poll until the count, bounded in time.
            while time.monotonic() < deadline:
                for batch in consumer.poll(timeout_ms=500).values():
                    values.extend(m.value for m in batch)
                if settled_at is None and done(values):
                    settled_at = time.monotonic() + settle_s
                if settled_at is not None and time.monotonic() >= settled_at:
                    break
        finally:
            consumer.close()
        return values

    def results(
        self, event_ids: list[str], timeout: float, per_event: int = 1
    ) -> dict[str, list[WorkflowResult]]:
        """Result events for `event_ids`, waited for until each has `per_event` (extras show up too)."""
        wanted = set(event_ids)

        def parse(values: list[bytes]) -> list[WorkflowResult]:
            out = []
            for value in values:
                with contextlib.suppress(ValueError):
                    result = WorkflowResult.model_validate_json(value)
                    if result.event_id in wanted:
                        out.append(result)
            return out

        def done(values: list[bytes]) -> bool:
            counts = Counter(r.event_id for r in parse(values))
            return all(counts[e] >= per_event for e in wanted)

        found: dict[str, list[WorkflowResult]] = {e: [] for e in event_ids}
        for result in parse(self.read_topic(names.TOPIC_RESULTS, done, timeout)):
            found[result.event_id].append(result)
        return found

    def dead_letters(self, expected: int, timeout: float) -> list[DeadLetter]:
        values = self.read_topic(names.TOPIC_REQUESTS_DLQ, lambda v: len(v) >= expected, timeout)
        return [DeadLetter.model_validate_json(v) for v in values]


def request(
    workflow: str, inputs: dict[str, Any], tenant: str = "default", event_id: str = ""
) -> WorkflowRequest:
    """A request with a fresh event id (or the one given)."""
    return WorkflowRequest(
        event_id=event_id or f"ev-{uuid.uuid4().hex[:12]}", workflow=workflow, inputs=inputs, tenant=tenant
    )


def traceparent() -> list[tuple[str, bytes]]:
    return [("traceparent", f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01".encode())]


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 1.0) -> None:
    """Poll `check` until true; a bounded wait that names what it waited for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def kill_tree(pid: int) -> None:
    """SIGKILL a process and its descendants (only processes this test caused)."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(procs, timeout=5)
