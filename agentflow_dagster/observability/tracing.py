"""OpenTelemetry tracing: provider from OTEL_* variables, W3C propagation, GenAI-convention span helpers."""

from __future__ import annotations

import fcntl
import json
import multiprocessing.util
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import default_getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACER_NAME = "agentflow_dagster"
PLAN_ID = "agentflow.plan_id"
TASK_ID = "agentflow.task_id"
_PROPAGATOR = TraceContextTextMapPropagator()
# At most this much of a SIGKILLed process's spans is lost (a clean exit flushes everything).
FILE_EXPORT_DELAY_MS = 1000
_lock = threading.Lock()
_provider: TracerProvider | None = None
_instrumented = False


class JsonLinesSpanExporter(SpanExporter):
    """Appends one JSON object per span to a file; a lock keeps lines from several processes whole."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        # `to_json(indent=None)` is already one compact line.
        lines = "".join(s.to_json(indent=None) + "\n" for s in spans)
        with open(self.path, "a", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write(lines)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


class SkipOrphanConnects(Sampler):
    """Drops SQLAlchemy `connect` spans (pool checkouts) that have no parent; the rest as `inner` decides.

    Dagster's own storage checks out a connection for every event it writes: each checkout outside our
    spans was a trace of its own with one span in it (about 60 per run, 2/3 of a run worker's spans).
    """

    def __init__(self, inner: Sampler):
        self.inner = inner

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Any = None,
        links: Any = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        if name == "connect" and not trace.get_current_span(parent_context).get_span_context().is_valid:
            return SamplingResult(Decision.DROP)
        return self.inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"SkipOrphanConnects{{{self.inner.get_description()}}}"


def traces_path(data_dir: str | Path | None = None) -> Path:
    """Where the local stack's spans go: $AGENTFLOW_DATA_DIR/traces/spans.jsonl."""
    root = Path(data_dir or os.environ.get("AGENTFLOW_DATA_DIR") or ".agentflow")
    return root.resolve() / "traces" / "spans.jsonl"


def _default_processor() -> SpanProcessor | None:
    env = os.environ
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # The exporter reads endpoint, headers, timeout and compression from OTEL_EXPORTER_OTLP_*.
        return BatchSpanProcessor(OTLPSpanExporter())
    # Batched off the ops' path (a synchronous export cost ~0.3 ms per span); the exit hooks registered
    # by `setup_tracing` write what is buffered when the process ends, so a step that exits loses nothing.
    exporter = JsonLinesSpanExporter(traces_path())
    return BatchSpanProcessor(exporter, schedule_delay_millis=FILE_EXPORT_DELAY_MS)


def setup_tracing(
    service_name: str = "agentflow", processor: SpanProcessor | None = None, *, instrument: bool = True
) -> TracerProvider:
    """The process's tracer provider, created once (OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES apply)."""
    global _provider
    with _lock:
        if _provider is not None:
            return _provider
        attrs: dict[str, Any] = {"service.name": os.environ.get("OTEL_SERVICE_NAME") or service_name}
        # The sampler OTEL_TRACES_SAMPLER configures (a provider that is never used reads it).
        configured = TracerProvider(shutdown_on_exit=False).sampler
        provider = TracerProvider(resource=Resource.create(attrs), sampler=SkipOrphanConnects(configured))
        chosen = processor if processor is not None else _default_processor()
        if chosen is not None and os.environ.get("OTEL_SDK_DISABLED", "").lower() != "true":
            provider.add_span_processor(chosen)
        _provider = provider
        # Global only once: client instrumentations (Kafka, Redis, SQLAlchemy) find the provider there.
        trace.set_tracer_provider(provider)
        # The provider flushes at interpreter exit (atexit); a multiprocessing child that ends with
        # os._exit (forkserver run workers and steps) runs only multiprocessing's finalizers.
        multiprocessing.util.Finalize(None, flush, exitpriority=100)
    if instrument:
        instrument_clients(provider)
    return provider


def use_provider(provider: TracerProvider | None) -> None:
    """Replace this module's provider (tests use an in-memory exporter); None resets it."""
    global _provider
    with _lock:
        _provider = provider


def tracer() -> trace.Tracer:
    """The agentflow tracer of the configured provider (a no-op tracer before setup)."""
    if _provider is None:
        return trace.NoOpTracer()
    return _provider.get_tracer(TRACER_NAME)


def flush(timeout_ms: int = 5000) -> None:
    """Export what is buffered (before a process exits, or before reading the spans it wrote)."""
    if _provider is not None:
        _provider.force_flush(timeout_ms)


def instrument_clients(provider: TracerProvider) -> list[str]:
    """Kafka, Redis and SQLAlchemy client spans through the OpenTelemetry instrumentation packages."""
    global _instrumented
    if _instrumented:
        return []
    _instrumented = True
    done: list[str] = []
    try:
        from opentelemetry.instrumentation.kafka import KafkaInstrumentor
        from opentelemetry.instrumentation.redis import RedisInstrumentor
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    except ImportError:  # the instrumentation packages are optional at run time
        return done
    chosen: list[tuple[str, Any]] = [("redis", RedisInstrumentor())]
    # Opt-in: the Kafka instrumentation appends its own `traceparent` header to every produced record (a
    # second one next to ours) and only traces iteration, not poll(); our send/process spans cover both.
    if os.environ.get("AGENTFLOW_OTEL_KAFKA_INSTRUMENTATION", "").lower() in ("1", "true", "yes"):
        chosen.append(("kafka", KafkaInstrumentor()))
    for name, inst in (
        *chosen,
        # SQLAlchemy 2.1 is newer than the package's declared range; its event hooks are unchanged.
        ("sqlalchemy", SQLAlchemyInstrumentor()),
    ):
        try:
            inst.instrument(tracer_provider=provider, skip_dep_check=True)
            done.append(name)
        # Instrumentation must never break the platform (bandit B112: deliberate).
        except Exception:  # noqa: BLE001, S112  # nosec B112
            continue
    return done


# --- W3C propagation ----------------------------------------------------------------------------


def inject_traceparent(ctx: otel_context.Context | None = None) -> str | None:
    """The W3C traceparent of the current (or given) span context, None when nothing is traced."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=ctx)
    return carrier.get("traceparent")


def extract_context(traceparent: str | None) -> otel_context.Context:
    """A context whose remote parent is `traceparent` (an empty context when it is missing or invalid)."""
    if not traceparent:
        return otel_context.Context()
    return _PROPAGATOR.extract({"traceparent": traceparent}, context=otel_context.Context())


def extract_headers(headers: Mapping[str, bytes | str]) -> otel_context.Context:
    """The parent context from Kafka record headers (`traceparent`, `tracestate`)."""
    carrier = {k: v.decode("utf-8", "replace") if isinstance(v, bytes) else v for k, v in headers.items()}
    return _PROPAGATOR.extract(carrier, context=otel_context.Context(), getter=default_getter)


def ids_of(span: Span) -> tuple[str | None, str | None]:
    """(trace_id, span_id) as lowercase hex, or (None, None) for a non-recording span."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None, None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


# --- spans ---------------------------------------------------------------------------------------


def _attrs(**values: Any) -> dict[str, Any]:
    return {k.replace("__", "."): v for k, v in values.items() if v is not None}


@contextmanager
def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    parent: str | otel_context.Context | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[Span]:
    """A span, child of `parent` (a traceparent or context) or of the current span; errors set its status."""
    ctx = extract_context(parent) if isinstance(parent, str) else parent
    with tracer().start_as_current_span(
        name, context=ctx, kind=kind, attributes=dict(attributes or {}), record_exception=True
    ) as current:
        try:
            yield current
        except BaseException as exc:
            current.set_attribute("error.type", type(exc).__name__)
            current.set_status(Status(StatusCode.ERROR, str(exc)[:500]))
            raise


def send_span(topic: str, **extra: Any) -> Any:
    """Producer span for one Kafka message (messaging conventions)."""
    attrs = {
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
        "messaging.operation.type": "send",
    }
    return span(f"send {topic}", kind=SpanKind.PRODUCER, attributes={**attrs, **_attrs(**extra)})


def process_span(topic: str, parent: otel_context.Context | str | None, **extra: Any) -> Any:
    """Consumer span for one Kafka message, child of the producer's context from its headers."""
    attrs = {
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
        "messaging.operation.type": "process",
    }
    return span(
        f"process {topic}", kind=SpanKind.CONSUMER, parent=parent, attributes={**attrs, **_attrs(**extra)}
    )


def workflow_span(workflow: str, plan_id: str, parent: str | None = None, **extra: Any) -> Any:
    """`invoke_workflow {workflow}`; the plan id is an agentflow.* attribute, never the workflow name."""
    attrs = _attrs(gen_ai__operation__name="invoke_workflow", gen_ai__workflow__name=workflow, **extra)
    return span(f"invoke_workflow {workflow}", parent=parent, attributes={**attrs, PLAN_ID: plan_id})


def agent_span(agent: str, plan_id: str, task_id: str, parent: str | None = None, **extra: Any) -> Any:
    """`invoke_agent {agent}` for one task attempt."""
    attrs = _attrs(gen_ai__operation__name="invoke_agent", gen_ai__agent__name=agent, **extra)
    return span(
        f"invoke_agent {agent}", parent=parent, attributes={**attrs, PLAN_ID: plan_id, TASK_ID: task_id}
    )


def retrieval_span(
    collection: str, plan_id: str | None = None, task_id: str | None = None, **extra: Any
) -> Any:
    """`retrieval` from one collection (gen_ai.data_source.id)."""
    attrs = _attrs(gen_ai__operation__name="retrieval", gen_ai__data_source__id=collection, **extra)
    ids = _attrs(agentflow__plan_id=plan_id, agentflow__task_id=task_id)
    return span("retrieval", kind=SpanKind.CLIENT, attributes={**attrs, **ids})


def embeddings_span(model: str, provider: str, **extra: Any) -> Any:
    """`embeddings {model}`."""
    attrs = _attrs(
        gen_ai__operation__name="embeddings", gen_ai__request__model=model, gen_ai__provider__name=provider
    )
    return span(f"embeddings {model}", kind=SpanKind.CLIENT, attributes={**attrs, **_attrs(**extra)})


def tool_span(tool: str, plan_id: str | None = None, task_id: str | None = None, **extra: Any) -> Any:
    """`execute_tool {tool}`."""
    attrs = _attrs(gen_ai__operation__name="execute_tool", gen_ai__tool__name=tool, **extra)
    return span(
        f"execute_tool {tool}",
        attributes={**attrs, **_attrs(agentflow__plan_id=plan_id, agentflow__task_id=task_id)},
    )


def chat_span_record(
    *,
    provider: str,
    request_model: str,
    response_model: str | None,
    latency_ms: float,
    input_tokens: int,
    output_tokens: int,
    finish_reason: str | None,
    error: str | None,
    plan_id: str | None,
    task_id: str | None,
    attempt: int,
    input_messages: list[dict[str, str]] | None = None,
    output_text: str | None = None,
    server_address: str | None = None,
    evaluations: Sequence[Mapping[str, Any]] = (),
) -> Span:
    """A finished `chat {model}` span for one completed attempt, back-dated by its measured latency.

    Each of `evaluations` becomes a `gen_ai.evaluation.result` event on the span (GenAI conventions:
    gen_ai.evaluation.name, .score.value, .score.label, .explanation), where Phoenix and Langfuse look.
    """
    end = time.time_ns()
    start = end - int(latency_ms * 1_000_000)
    attrs = _attrs(
        gen_ai__operation__name="chat",
        gen_ai__provider__name=provider,
        server__address=server_address,
        gen_ai__request__model=request_model,
        gen_ai__response__model=response_model,
        gen_ai__usage__input_tokens=input_tokens,
        gen_ai__usage__output_tokens=output_tokens,
        gen_ai__response__finish_reasons=[finish_reason] if finish_reason else None,
        agentflow__plan_id=plan_id,
        agentflow__task_id=task_id,
        agentflow__llm__attempt=attempt,
    )
    # Content only when the operator opted in (OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT).
    if input_messages is not None:
        attrs["gen_ai.input.messages"] = json.dumps(input_messages, ensure_ascii=False)
    if output_text is not None:
        attrs["gen_ai.output.messages"] = json.dumps(
            [{"role": "assistant", "parts": [{"type": "text", "content": output_text}]}], ensure_ascii=False
        )
    current = tracer().start_span(
        f"chat {request_model}", kind=SpanKind.CLIENT, attributes=attrs, start_time=start
    )
    if error:
        current.set_attribute("error.type", error.split(":", 1)[0][:80])
        current.set_status(Status(StatusCode.ERROR, error[:500]))
    for ev in evaluations:
        current.add_event(
            "gen_ai.evaluation.result",
            _attrs(
                gen_ai__evaluation__name=ev["name"],
                gen_ai__evaluation__score__value=ev.get("score"),
                gen_ai__evaluation__score__label=ev.get("label"),
                gen_ai__evaluation__explanation=ev.get("explanation"),
            ),
            timestamp=end,
        )
    current.end(end_time=end)
    return current
