"""LLM call records: one `chat` span and one redacted `llm_calls` row per attempt, evaluation beside it."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import sqlalchemy as sa

from agentflow_dagster.db import transaction
from agentflow_dagster.llm.types import CallAttempt
from agentflow_dagster.names import BUCKET_ARTIFACTS
from agentflow_dagster.observability import tracing
from agentflow_dagster.observability.config import ObservabilitySettings
from agentflow_dagster.observability.evaluation import Embed, evaluate_call, evaluation_results
from agentflow_dagster.observability.redaction import Redactor, redactor_from_settings

_INSERT = sa.text(
    "INSERT INTO llm_calls (plan_id, task_id, run_id, trace_id, span_id, provider, model, prompt, "
    "prompt_ref, "
    "response, response_ref, latency_ms, input_tokens, output_tokens, cost_usd, finish_reason, cache_hit, "
    "attempt, error, evaluation, content_mode, redactions) VALUES (:plan_id, :task_id, :run_id, :trace_id, "
    ":span_id, :provider, :model, CAST(:prompt AS jsonb), :prompt_ref, :response, :response_ref, "
    ":latency_ms, "
    ":input_tokens, :output_tokens, :cost_usd, :finish_reason, :cache_hit, :attempt, :error, "
    "CAST(:evaluation AS jsonb), :content_mode, CAST(:redactions AS jsonb))"
)

_INSERT_RETURNING_ID = sa.text(_INSERT.text + " RETURNING id")


@dataclass
class ContextSource:
    """Passages retrieved for the current task, filled by `TracedRetriever` and read by the evaluator."""

    texts: list[str] = field(default_factory=list)


_INSERT_RETRIEVAL = sa.text(
    "INSERT INTO retrievals (plan_id, task_id, run_id, trace_id, span_id, collection, query, content_mode, "
    "redactions, k, mode, backend, index_name, embedding_model, latency_ms, hits, error) VALUES (:plan_id, "
    ":task_id, :run_id, :trace_id, :span_id, :collection, :query, :content_mode, CAST(:redactions AS jsonb), "
    ":k, :mode, :backend, :index_name, :embedding_model, :latency_ms, CAST(:hits AS jsonb), :error) "
    "RETURNING id"
)
# What a `retrievals` hit keeps: where the chunk is in which version of which document, and its rank.
_HIT_FIELDS = (
    "chunk_id",
    "document",
    "version",
    "ordinal",
    "start",
    "end",
    "score",
    "vector_rank",
    "text_rank",
)


def _field(hit: Any, name: str) -> Any:
    return hit.get(name) if isinstance(hit, dict) else getattr(hit, name, None)


def hit_record(hit: Any) -> dict[str, Any]:
    """The lineage of one hit (RAG `Hit`, agents `Hit` or dict); fields a retriever lacks are left out."""
    out = {name: _field(hit, name) for name in _HIT_FIELDS}
    # Generic retrievers name these id and source (agents.tools.Hit).
    out["chunk_id"] = out["chunk_id"] or _field(hit, "id")
    out["document"] = out["document"] or _field(hit, "source") or None
    return {k: v for k, v in out.items() if v is not None}


@dataclass
class TracedRetriever:
    """Wraps a retriever: each search is a `retrieval` span and a `retrievals` row; passages feed evaluation.

    With an engine, the row is written before the hits are returned: a task that cannot record what it
    read fails (only when Postgres is down, and the task's other history rows would fail then too).
    """

    inner: Any
    plan_id: str | None = None
    task_id: str | None = None
    context: ContextSource = field(default_factory=ContextSource)
    engine: sa.Engine | None = None
    run_id: str | None = None
    trace_id: str | None = None  # fallback when tracing is off: the workflow's trace id from the run tags
    settings: ObservabilitySettings = field(default_factory=ObservabilitySettings)
    rows: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.redactor = redactor_from_settings(
            self.settings.redact_pii_patterns, self.settings.redact_secret_patterns
        )

    def search(self, query: str, collection: str, k: int) -> list[Any]:
        """The inner retriever's hits, under a span with the hit count, recorded in `retrievals`."""
        with tracing.retrieval_span(collection, self.plan_id, self.task_id, gen_ai__request__top_k=k) as sp:
            start = time.perf_counter()
            try:
                hits = list(self.inner.search(query, collection, k))
            except Exception as exc:
                latency = (time.perf_counter() - start) * 1000
                self._record(sp, query, collection, k, [], latency, f"{type(exc).__name__}: {exc}")
                raise
            latency = (time.perf_counter() - start) * 1000
            sp.set_attribute("agentflow.retrieval.hits", len(hits))
            index = self._record(sp, query, collection, k, hits, latency, None)
            if index:
                sp.set_attribute("agentflow.retrieval.index", index)
        for hit in hits:
            text = _field(hit, "text")
            if isinstance(text, str):
                self.context.texts.append(text)
        return hits

    def _index_of(self, collection: str, hits: list[Any]) -> str | None:
        """The physical index the hits came from; with no hits, the one live behind the alias now."""
        served = [i for i in (_field(h, "index") for h in hits) if i]
        if served:
            return str(served[0])
        info = getattr(getattr(self.inner, "store", None), "info", None)
        live = info(collection) if callable(info) else None
        return None if live is None else str(live.name)

    def _record(
        self, sp: Any, query: str, collection: str, k: int, hits: list[Any], latency: float, error: str | None
    ) -> str | None:
        if self.engine is None:
            return None
        index = self._index_of(collection, hits)
        records = []
        for hit in hits:
            rec = hit_record(hit)
            served = _field(hit, "index")
            if served and served != index:  # an alias swap between the two halves of a hybrid search
                rec["index"] = served
            records.append(rec)
        counts: dict[str, int] = {}
        stored_query = None if self.settings.llm_content_mode == "none" else self.redactor.text(query, counts)
        trace_id, span_id = tracing.ids_of(sp)
        store = getattr(self.inner, "store", None)
        embedder = getattr(self.inner, "embedder", None)
        with self.engine.begin() as conn:
            row = conn.execute(
                _INSERT_RETRIEVAL,
                {
                    "plan_id": self.plan_id,
                    "task_id": self.task_id,
                    "run_id": self.run_id,
                    "trace_id": trace_id or self.trace_id,
                    "span_id": span_id,
                    "collection": collection,
                    "query": stored_query,
                    "content_mode": self.settings.llm_content_mode,
                    "redactions": json.dumps(counts),
                    "k": k,
                    "mode": getattr(self.inner, "mode", None),
                    "backend": getattr(store, "backend", None),
                    "index_name": index,
                    "embedding_model": getattr(embedder, "model_id", None),
                    "latency_ms": round(latency, 3),
                    "hits": json.dumps(records, default=str),
                    "error": self.redactor.text(error) if error else None,
                },
            ).scalar_one()
        self.rows.append(int(row))
        return index


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _cost(value: float | None) -> Decimal:
    """A cost as the `llm_calls.cost_usd` column (numeric(14, 6)) stores it."""
    return Decimal(repr(float(value or 0.0))).quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)


def _totals_dict(
    calls: int, tin: int, tout: int, cost: float, latency: float, errors: int, means: dict[str, Any]
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "llm_calls": int(calls),
        "llm_errors": int(errors),
        "llm_input_tokens": int(tin),
        "llm_output_tokens": int(tout),
        "llm_cost_usd": float(cost),
        "llm_latency_ms": round(float(latency), 1),
    }
    for name, value in means.items():
        if value is not None:
            out[name] = round(float(value), 4)
    return out


@dataclass
class CallTotals:
    """`task_llm_totals` kept in memory over the rows one or more recorders wrote (the same figures)."""

    calls: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal = Decimal(0)
    latency_ms: float = 0.0
    groundedness: list[float] = field(default_factory=list)
    relevance: list[float] = field(default_factory=list)
    schema_valid: list[float] = field(default_factory=list)

    def add(self, attempt: CallAttempt, evaluation: dict[str, Any] | None) -> None:
        self.calls += 1
        self.errors += attempt.error is not None
        self.input_tokens += attempt.input_tokens or 0
        self.output_tokens += attempt.output_tokens or 0
        self.cost += _cost(attempt.cost_usd)
        self.latency_ms += attempt.latency_ms or 0.0
        ev = evaluation or {}
        for name, values in (("groundedness", self.groundedness), ("answer_relevance", self.relevance)):
            if ev.get(name) is not None:
                values.append(float(ev[name]))
        if ev.get("schema_valid") is not None:
            self.schema_valid.append(1.0 if ev["schema_valid"] else 0.0)

    def as_metadata(self) -> dict[str, Any]:
        """What `task_llm_totals` returns for the same rows."""

        def mean(values: list[float]) -> float | None:
            return sum(values) / len(values) if values else None

        return _totals_dict(
            self.calls, self.input_tokens, self.output_tokens, float(self.cost), self.latency_ms,
            self.errors, {
                "eval_groundedness": mean(self.groundedness),
                "eval_answer_relevance": mean(self.relevance),
                "eval_schema_valid_rate": mean(self.schema_valid),
            },
        )  # fmt: skip


@dataclass
class ObservedCallRecorder:
    """Recorder for one task execution: span, redaction, large content by reference, evaluation, row."""

    engine: sa.Engine
    plan_id: str | None
    task_id: str | None
    run_id: str | None
    store: Any = None  # an object store with put(bucket, key, data, content_type); None keeps content inline
    trace_id: str | None = None  # fallback when tracing is off: the workflow's trace id from the run tags
    schema: dict[str, Any] | None = None
    question: str = ""
    context: ContextSource = field(default_factory=ContextSource)
    settings: ObservabilitySettings = field(default_factory=ObservabilitySettings)
    embed: Embed | None = None
    redactor: Redactor | None = None
    cache_hit: bool = False
    rows: list[int] = field(default_factory=list)
    # What the rows hold that `task_llm_totals` reads (shared by a task's recorders: no query for them).
    totals: CallTotals = field(default_factory=CallTotals)

    def __post_init__(self) -> None:
        if self.redactor is None:
            self.redactor = redactor_from_settings(
                self.settings.redact_pii_patterns, self.settings.redact_secret_patterns
            )

    def _content(self, attempt: CallAttempt, counts: dict[str, int]) -> tuple[Any, str | None]:
        assert self.redactor is not None
        if self.settings.llm_content_mode == "none":
            return None, None
        return self.redactor.value(attempt.messages, counts), (
            None if attempt.response is None else self.redactor.text(attempt.response, counts)
        )

    def _offload(self, kind: str, blob: bytes, span_id: str | None) -> str | None:
        """Store `blob` when it is above the inline limit; returns its `s3://` reference."""
        if self.store is None or len(blob) <= self.settings.llm_content_inline_limit:
            return None
        name = f"{span_id or _digest(blob)}-{kind}"
        key = f"llm_calls/{self.plan_id or 'no-plan'}/{self.task_id or 'no-task'}/{name}"
        content_type = "application/json" if kind == "prompt.json" else "text/plain; charset=utf-8"
        self.store.put(BUCKET_ARTIFACTS, key, blob, content_type)
        return f"s3://{BUCKET_ARTIFACTS}/{key}"

    def __call__(self, attempt: CallAttempt) -> None:
        counts: dict[str, int] = {}
        prompt, response = self._content(attempt, counts)
        capture = self.settings.capture_message_content and self.settings.llm_content_mode != "none"
        evaluation = evaluate_call(
            attempt.response if attempt.error is None else None,
            schema=self.schema,
            question=self.question,
            context=list(self.context.texts),
            embed=self.embed,
        )
        sp = tracing.chat_span_record(
            provider=attempt.provider,
            request_model=attempt.model,
            response_model=attempt.model if attempt.error is None else None,
            latency_ms=attempt.latency_ms,
            input_tokens=attempt.input_tokens,
            output_tokens=attempt.output_tokens,
            finish_reason=attempt.finish_reason,
            error=attempt.error,
            plan_id=self.plan_id,
            task_id=self.task_id,
            attempt=attempt.attempt,
            input_messages=prompt if capture else None,
            output_text=response if capture else None,
            server_address=attempt.server_address,
            evaluations=evaluation_results(evaluation),
        )
        trace_id, span_id = tracing.ids_of(sp)
        prompt_json = json.dumps(prompt, ensure_ascii=False) if prompt is not None else None
        prompt_ref = self._offload("prompt.json", prompt_json.encode(), span_id) if prompt_json else None
        response_ref = self._offload("response.txt", response.encode(), span_id) if response else None
        with self.engine.begin() as conn:
            row = conn.execute(
                _INSERT_RETURNING_ID,
                {
                    "plan_id": self.plan_id,
                    "task_id": self.task_id,
                    "run_id": self.run_id,
                    "trace_id": trace_id or self.trace_id,
                    "span_id": span_id,
                    "provider": attempt.provider,
                    "model": attempt.model,
                    "prompt": None if prompt_ref else prompt_json,
                    "prompt_ref": prompt_ref,
                    "response": None if response_ref else response,
                    "response_ref": response_ref,
                    "latency_ms": attempt.latency_ms,
                    "input_tokens": attempt.input_tokens,
                    "output_tokens": attempt.output_tokens,
                    "cost_usd": attempt.cost_usd,
                    "finish_reason": attempt.finish_reason,
                    "cache_hit": self.cache_hit,
                    "attempt": attempt.attempt,
                    "error": self.redactor.text(attempt.error)
                    if (self.redactor and attempt.error)
                    else attempt.error,
                    "evaluation": json.dumps(evaluation) if evaluation else None,
                    "content_mode": self.settings.llm_content_mode,
                    "redactions": json.dumps(counts),
                },
            ).scalar_one()
        self.rows.append(int(row))
        self.totals.add(attempt, evaluation)


def question_of(inputs: dict[str, Any], retrieval_query: str | None) -> str:
    """What the task asks: the retrieval query, else the first question-like input."""
    if retrieval_query:
        return retrieval_query
    for key in ("question", "topic", "message", "query", "text", "document"):
        value = inputs.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return " ".join(v for v in inputs.values() if isinstance(v, str))[:2000]


def task_llm_totals(engine: sa.Engine, plan_id: str, task_id: str, run_id: str) -> dict[str, Any]:
    """Tokens, cost, latency and mean evaluation of one task's calls in one run (op output metadata)."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT count(*), COALESCE(sum(input_tokens), 0), COALESCE(sum(output_tokens), 0), "
                "COALESCE(sum(cost_usd), 0), COALESCE(sum(latency_ms), 0), count(*) FILTER (WHERE error "
                "IS NOT NULL), "
                "avg((evaluation->>'groundedness')::float), avg((evaluation->>'answer_relevance')::float), "
                "avg(CASE WHEN (evaluation->>'schema_valid')::boolean THEN 1.0 ELSE 0.0 END) "
                "FILTER (WHERE evaluation ? 'schema_valid' AND evaluation->>'schema_valid' IS NOT NULL) "
                "FROM llm_calls WHERE plan_id = :p AND task_id = :t AND run_id = :r"
            ),
            {"p": plan_id, "t": task_id, "r": run_id},
        ).one()
    calls, tin, tout, cost, latency, errors, ground, relevance, valid = row
    return _totals_dict(
        calls, tin, tout, cost, latency, errors, {
            "eval_groundedness": ground, "eval_answer_relevance": relevance, "eval_schema_valid_rate": valid,
        },
    )  # fmt: skip


def workflow_llm_totals(bind: sa.Engine | sa.Connection, plan_id: str) -> dict[str, Any]:
    """The plan's LLM totals over all runs and attempts, with the mean evaluation (result op metadata)."""
    with transaction(bind) as conn:
        row = conn.execute(
            sa.text(
                "SELECT llm_calls, llm_errors, input_tokens, output_tokens, cost_usd, latency_ms, "
                "mean_groundedness, mean_answer_relevance FROM workflow_llm_totals WHERE plan_id = :p"
            ),
            {"p": plan_id},
        ).one_or_none()
    if row is None:
        return {"workflow_llm_calls": 0}
    calls, errors, tin, tout, cost, latency, ground, relevance = row
    out: dict[str, Any] = {
        "workflow_llm_calls": int(calls),
        "workflow_llm_errors": int(errors),
        "workflow_input_tokens": int(tin),
        "workflow_output_tokens": int(tout),
        "workflow_cost_usd": float(cost),
        "workflow_llm_latency_ms": round(float(latency), 1),
    }
    if ground is not None:
        out["workflow_eval_groundedness"] = round(float(ground), 4)
    if relevance is not None:
        out["workflow_eval_answer_relevance"] = round(float(relevance), 4)
    return out
