"""Prometheus metrics derived at scrape time from durable state, so counts are exact across processes.

Run workers are separate, short-lived processes: in-process counters would be lost or double counted.
Every counter and histogram here is a query over the execution history in Postgres (workflow_runs,
task_runs, llm_calls, audit_log) at scrape time; gauges come from the Dagster instance (queued runs),
Kafka (end offsets vs. sensor cursors) and psutil (the stack's recorded pids).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

import psutil
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from agentflow_dagster import names

# OpenTelemetry GenAI semantic-convention bucket boundaries.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TASK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
E2E_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
# One row per (call, evaluation name) with its score, from llm_calls.evaluation.
EVALUATION_SQL = " UNION ALL ".join(
    f"SELECT model, '{name}' AS name, {expr} AS score FROM llm_calls WHERE evaluation ? '{key}'"
    for name, key, expr in (
        ("schema_validity", "schema_valid", "CASE (evaluation->>'schema_valid')::boolean WHEN true THEN 1.0 "
         "WHEN false THEN 0.0 END"),
        ("groundedness", "groundedness", "(evaluation->>'groundedness')::float"),
        ("answer_relevance", "answer_relevance", "(evaluation->>'answer_relevance')::float"),
    )
)  # fmt: skip
DLQ_ACTION = "event.dead_lettered"
SENSOR_TOPICS = {
    "workflow_request_sensor": names.TOPIC_REQUESTS,
    "document_sensor": names.TOPIC_DOCUMENTS,
    "workflow_approval_sensor": names.TOPIC_APPROVALS,
}


def _histogram_sql(value_sql: str, buckets: Sequence[float], labels: Sequence[str], from_sql: str) -> str:
    """One row per label set: cumulative count per bucket, total count and sum, computed by Postgres."""
    cols = ", ".join(f"count(*) FILTER (WHERE v <= {b})" for b in buckets)
    group = ", ".join(labels)
    return (
        f"SELECT {group}, {cols}, count(*), COALESCE(sum(v), 0) FROM "
        f"(SELECT {group}, ({value_sql})::float AS v {from_sql}) AS t GROUP BY {group}"
    )


def _histogram(
    conn: sa.Connection,
    name: str,
    doc: str,
    labels: Sequence[str],
    value_sql: str,
    from_sql: str,
    buckets: Sequence[float],
    label_names: Sequence[str] | None = None,
) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(name, doc, labels=list(label_names or labels))
    for row in conn.execute(sa.text(_histogram_sql(value_sql, buckets, labels, from_sql))):
        n = len(labels)
        counts = row[n : n + len(buckets)]
        total, total_sum = row[n + len(buckets)], row[n + len(buckets) + 1]
        pairs = [(str(b), float(c)) for b, c in zip(buckets, counts, strict=True)] + [("+Inf", float(total))]
        fam.add_metric([str(v) for v in row[:n]], pairs, float(total_sum))
    return fam


@dataclass(eq=False)  # registries key collectors by identity
class AgentflowCollector(Collector):
    """Collects every agentflow metric on each scrape; a failing source is reported, not fatal."""

    engine: sa.Engine
    instance_factory: Callable[[], Any] | None = None
    kafka_consumer_factory: Callable[[], Any] | None = None
    stack_state: Path | None = None
    sensor_topics: Mapping[str, str] = field(default_factory=lambda: dict(SENSOR_TOPICS))
    errors: dict[str, str] = field(default_factory=dict)

    def collect(self) -> Iterator[Metric]:
        """Every family, each source guarded so one unreachable component leaves the others intact."""
        self.errors = {}
        for source, produce in (
            ("postgres", self._postgres),
            ("dagster", self._dagster),
            ("kafka", self._kafka),
            ("processes", self._processes),
        ):
            try:
                yield from list(produce())
            except Exception as exc:  # noqa: BLE001 - surfaced as agentflow_metrics_source_up=0
                self.errors[source] = f"{type(exc).__name__}: {exc}"[:300]
        up = GaugeMetricFamily(
            "agentflow_metrics_source_up", "1 when the source answered this scrape", labels=["source"]
        )
        for source in ("postgres", "dagster", "kafka", "processes"):
            up.add_metric([source], 0.0 if source in self.errors else 1.0)
        yield up

    def _postgres(self) -> Iterable[Metric]:
        out: list[Metric] = []
        with self.engine.connect() as conn:
            started = CounterMetricFamily(
                "agentflow_workflows_started", "Workflows whose run began", labels=["workflow", "tenant"]
            )
            completed = CounterMetricFamily(
                "agentflow_workflows_completed", "Workflows that succeeded", labels=["workflow", "tenant"]
            )
            failed = CounterMetricFamily(
                "agentflow_workflows_failed", "Workflows that failed", labels=["workflow", "tenant"]
            )
            for wf, tenant, n_started, n_ok, n_failed in conn.execute(
                sa.text(
                    "SELECT workflow, tenant, count(*) FILTER (WHERE started_at IS NOT NULL), "
                    "count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE status = 'failed') "
                    "FROM workflow_runs GROUP BY workflow, tenant"
                )
            ):
                started.add_metric([wf, tenant], n_started)
                completed.add_metric([wf, tenant], n_ok)
                failed.add_metric([wf, tenant], n_failed)
            out += [started, completed, failed]
            out.append(
                _histogram(
                    conn,
                    "agentflow_workflow_e2e_latency_seconds",
                    "Event submitted -> run finished",
                    ["workflow", "tenant"],
                    "extract(epoch FROM finished_at - COALESCE(submitted_at, started_at))",
                    "FROM workflow_runs WHERE finished_at IS NOT NULL AND status IN ('succeeded', 'failed')",
                    E2E_BUCKETS,
                )
            )
            out.append(
                _histogram(
                    conn,
                    "agentflow_task_duration_seconds",
                    "Task attempt duration (reused outputs excluded)",
                    ["agent"],
                    "extract(epoch FROM finished_at - started_at)",
                    "FROM task_runs WHERE finished_at IS NOT NULL AND NOT reused",
                    TASK_BUCKETS,
                )
            )
            retries = CounterMetricFamily(
                "agentflow_task_retries", "Task attempts after the first", labels=["agent"]
            )
            failures = CounterMetricFamily(
                "agentflow_task_failures", "Failed task attempts", labels=["agent"]
            )
            for agent, n_retry, n_fail in conn.execute(
                sa.text(
                    "SELECT agent, count(*) FILTER (WHERE attempt > 1), count(*) FILTER (WHERE status = "
                    "'failed') "
                    "FROM task_runs GROUP BY agent"
                )
            ):
                retries.add_metric([agent], n_retry)
                failures.add_metric([agent], n_fail)
            out += [retries, failures]
            dlq = CounterMetricFamily(
                "agentflow_dlq_events", "Events written to a dead-letter topic", labels=["topic"]
            )
            for topic, n in conn.execute(
                sa.text(
                    "SELECT COALESCE(detail->>'dlq_topic', subject), count(*) FROM audit_log WHERE "
                    "action = :a "
                    "GROUP BY 1"
                ),
                {"a": DLQ_ACTION},
            ):
                dlq.add_metric([topic], n)
            out.append(dlq)
            answered = "FROM llm_calls WHERE error IS NULL"
            tokens = HistogramMetricFamily(
                "gen_ai_client_token_usage",
                "Tokens per LLM call",
                labels=["gen_ai_request_model", "gen_ai_token_type"],
            )
            for token_type, column in (("input", "input_tokens"), ("output", "output_tokens")):
                part = _histogram(conn, "x", "", ["model"], f"COALESCE({column}, 0)", answered, TOKEN_BUCKETS)
                for sample_set in _by_labels(part):
                    model, buckets, total = sample_set
                    tokens.add_metric([model, token_type], buckets, total)
            out.append(tokens)
            out.append(
                _histogram(
                    conn,
                    "gen_ai_client_operation_duration_seconds",
                    "LLM call duration (every attempt, failed ones included)",
                    ["model"],
                    "latency_ms / 1000.0",
                    "FROM llm_calls WHERE latency_ms IS NOT NULL",
                    DURATION_BUCKETS,
                    ["gen_ai_request_model"],
                )
            )
            calls = CounterMetricFamily(
                "agentflow_llm_calls",
                "LLM call attempts",
                labels=["gen_ai_request_model", "gen_ai_provider_name"],
            )
            for model, provider, n in conn.execute(
                sa.text("SELECT model, provider, count(*) FROM llm_calls GROUP BY model, provider")
            ):
                calls.add_metric([model, provider], n)
            out.append(calls)
            cost = CounterMetricFamily(
                "agentflow_llm_cost_usd",
                "LLM cost of the calls whose model has a known price",
                labels=["gen_ai_request_model"],
            )
            unpriced = CounterMetricFamily(
                "agentflow_llm_unpriced_calls",
                "Answered LLM calls whose model has no known price (their cost is unknown, not 0)",
                labels=["gen_ai_request_model"],
            )
            for model, usd, n_unpriced in conn.execute(
                sa.text(
                    "SELECT model, sum(cost_usd), count(*) FILTER (WHERE cost_usd IS NULL AND error IS NULL) "
                    "FROM llm_calls GROUP BY model"
                )
            ):
                if usd is not None:  # a model never priced gets no cost series at all
                    cost.add_metric([model], float(usd))
                unpriced.add_metric([model], n_unpriced)
            out += [cost, unpriced]
            out.append(
                _histogram(
                    conn,
                    "agentflow_llm_evaluation_score",
                    "Per-call evaluation scores (gen_ai.evaluation.result events): schema_validity 0/1, "
                    "groundedness and answer_relevance in [0, 1]",
                    ["model", "name"],
                    "score",
                    f"FROM ({EVALUATION_SQL}) AS e WHERE score IS NOT NULL",
                    SCORE_BUCKETS,
                    ["gen_ai_request_model", "gen_ai_evaluation_name"],
                )
            )
        return out

    def _dagster(self) -> Iterable[Metric]:
        if self.instance_factory is None:
            return []
        import dagster as dg

        instance = self.instance_factory()
        depth = instance.get_runs_count(dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED]))
        gauge = GaugeMetricFamily("agentflow_run_queue_depth", "Runs waiting in the run queue")
        gauge.add_metric([], depth)
        self._cursors = sensor_cursors(instance, self.sensor_topics)
        return [gauge]

    def _kafka(self) -> Iterable[Metric]:
        cursors: dict[str, dict[int, int]] = getattr(self, "_cursors", {})
        if self.kafka_consumer_factory is None or not cursors:
            return []
        from kafka import TopicPartition

        lag = GaugeMetricFamily(
            "agentflow_kafka_consumer_lag",
            "End offset minus the sensor cursor",
            labels=["topic", "partition"],
        )
        consumer = self.kafka_consumer_factory()
        try:
            for topic, offsets in sorted(cursors.items()):
                parts = consumer.partitions_for_topic(topic) or set()
                tps = [TopicPartition(topic, p) for p in sorted(parts)]
                ends = consumer.end_offsets(tps) if tps else {}
                for tp in tps:
                    # Tansu can report an end offset one below the true one: never report negative lag.
                    lag.add_metric(
                        [topic, str(tp.partition)], max(0, ends.get(tp, 0) - offsets.get(tp.partition, 0))
                    )
        finally:
            consumer.close()
        return [lag]

    def _processes(self) -> Iterable[Metric]:
        if self.stack_state is None or not self.stack_state.exists():
            return []
        cpu = CounterMetricFamily("process_cpu_seconds", "CPU seconds of a stack process", labels=["process"])
        rss = GaugeMetricFamily(
            "process_resident_memory_bytes", "Resident memory of a stack process", labels=["process"]
        )
        state = json.loads(self.stack_state.read_text())
        for name, rec in sorted(state.get("services", {}).items()):
            try:
                proc = psutil.Process(int(rec["pid"]))
                # The Dagster daemon and webserver fork workers: their children are part of their cost.
                family = [proc, *proc.children(recursive=True)]
                seconds, memory = 0.0, 0
                for p in family:
                    try:
                        times = p.cpu_times()
                        seconds += times.user + times.system
                        memory += p.memory_info().rss
                    except psutil.Error:
                        continue
            except (psutil.Error, KeyError, ValueError):
                continue
            cpu.add_metric([name], seconds)
            rss.add_metric([name], memory)
        return [cpu, rss]


def _by_labels(fam: HistogramMetricFamily) -> Iterator[tuple[str, list[tuple[str, float]], float]]:
    """(first label value, cumulative buckets, sum) per label set of a one-label histogram family."""
    grouped: dict[str, dict[str, float]] = {}
    sums: dict[str, float] = {}
    for s in fam.samples:
        key = s.labels["model"]
        if s.name.endswith("_bucket"):
            grouped.setdefault(key, {})[s.labels["le"]] = s.value
        elif s.name.endswith("_sum"):
            sums[key] = s.value
    for key, buckets in grouped.items():
        yield key, list(buckets.items()), sums.get(key, 0.0)


def sensor_cursors(instance: Any, sensor_topics: Mapping[str, str]) -> dict[str, dict[int, int]]:
    """Next offset per partition from each Kafka sensor's cursor, by topic."""
    from dagster._core.scheduler.instigation import InstigatorType

    out: dict[str, dict[int, int]] = {}
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        topic = sensor_topics.get(state.name)
        cursor = getattr(state.instigator_data, "cursor", None) if state.instigator_data else None
        if topic is None or not cursor:
            continue
        try:
            offsets = json.loads(cursor).get("offsets", {})
        except ValueError:
            continue
        merged = out.setdefault(topic, {})
        for part, offset in offsets.items():
            merged[int(part)] = max(merged.get(int(part), 0), int(offset))
    return out


def build_registry(collector: AgentflowCollector) -> CollectorRegistry:
    """A registry with only our collector (the default one adds this process's own process_* series)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def serve(registry: CollectorRegistry, host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
    """Serve `/metrics` (and `/healthz`) in a background thread; returns the server to shut down."""
    from wsgiref.simple_server import make_server

    from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        return metrics_app(environ, start_response)

    server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_SilentHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="metrics-server")
    thread.start()
    return server, thread
