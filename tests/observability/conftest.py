"""Fixtures: an in-memory span exporter, and a helper that runs a workflow in a separate process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agentflow_dagster.events import WorkflowRequest
from agentflow_dagster.observability import tracing

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """This process's spans, in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    yield exporter
    tracing.use_provider(None)


def spawn_worker(
    pg_url: str, redis_url: str, object_dir: Path, req: WorkflowRequest, traceparent: str, data_dir: Path
) -> subprocess.Popen[str]:
    """Start a run worker process; its spans go to data_dir/traces/spans.jsonl (the local-stack exporter)."""
    env = {**os.environ, "AGENTFLOW_DATA_DIR": str(data_dir), "DAGSTER_HOME": str(data_dir)}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    args = [sys.executable, "-m", "tests.observability.run_worker", pg_url, redis_url, str(object_dir)]
    return subprocess.Popen(
        [*args, req.model_dump_json(), traceparent], cwd=REPO, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> dict[str, object]:
    """Wait for a worker and return its JSON report; fail with its stderr otherwise."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    report: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return report


def file_spans(data_dir: Path) -> list[dict[str, object]]:
    """Spans a worker wrote through the JSON-lines exporter."""
    path = data_dir / "traces" / "spans.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
