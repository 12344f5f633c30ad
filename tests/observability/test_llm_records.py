"""LLM call records: tokens, redacted content, large prompts by reference, evaluation beside the call."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import sqlalchemy as sa

from agentflow_dagster.db import make_engine
from agentflow_dagster.llm.types import CallAttempt
from agentflow_dagster.names import BUCKET_ARTIFACTS
from agentflow_dagster.observability.config import ObservabilitySettings
from agentflow_dagster.observability.llm_records import ContextSource, ObservedCallRecorder
from agentflow_dagster.observability.timeline import load_timeline, render_timeline
from resources.object_store import LocalObjectStore

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
SECRET = "sk-proj-" + "A1b2C3d4" * 4


def _row(engine: sa.Engine, row_id: int) -> sa.Row:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT * FROM llm_calls WHERE id = :i"), {"i": row_id}).one()


def test_redacted_tokens_and_large_prompt_by_reference(pg_url: str, object_store_dir: Path) -> None:
    engine = make_engine(pg_url)
    store = LocalObjectStore(object_store_dir)
    plan = f"plan-{uuid.uuid4().hex[:8]}"
    recorder = ObservedCallRecorder(
        engine, plan, "answer", "run-1", store=store, schema=SCHEMA,
        question="How do KV caches reduce latency?",
        context=ContextSource(["KV caches store keys and values, so latency drops for long prompts."]),
        settings=ObservabilitySettings(llm_content_inline_limit=2000),
    )  # fmt: skip
    small = [{"role": "user", "content": f"my key is {SECRET}, mail me at jane.doe@example.com"}]
    answer = json.dumps({"answer": "KV caches store keys and values, so latency drops."})
    recorder(CallAttempt("offline-extractive", "m1", small, 1, 12.5, answer, 42, 7, "stop", 0.001))
    big = [{"role": "user", "content": "context " * 1000 + f" token={SECRET}"}]
    recorder(CallAttempt("offline-extractive", "m1", big, 2, 3.0, None, 0, 0, None, 0.0, "500 server error"))

    first, second = (_row(engine, i) for i in recorder.rows)
    assert (first.input_tokens, first.output_tokens, float(first.cost_usd)) == (42, 7, 0.001)
    text = json.dumps(first.prompt)
    assert SECRET not in text and "jane.doe@example.com" not in text
    assert "[REDACTED:openai_key]" in text and "[REDACTED:email]" in text
    assert first.redactions == {"openai_key": 1, "email": 1} and first.content_mode == "redacted"
    assert first.evaluation["schema_valid"] is True and first.evaluation["groundedness"] == 1.0
    assert (
        first.evaluation["answer_relevance"] > 0.5
        and first.evaluation["relevance_method"] == "lexical-overlap"
    )
    # The large prompt travels by reference; the stored object is redacted too.
    assert second.prompt is None and second.prompt_ref.startswith(
        f"s3://{BUCKET_ARTIFACTS}/llm_calls/{plan}/"
    )
    stored = store.get(BUCKET_ARTIFACTS, second.prompt_ref.split("/", 3)[3]).decode()
    assert SECRET not in stored and "[REDACTED:" in stored
    assert second.error == "500 server error" and second.evaluation is None

    none_mode = ObservedCallRecorder(
        engine, plan, "answer", "run-1", settings=ObservabilitySettings(llm_content_mode="none")
    )
    none_mode(CallAttempt("offline-extractive", "m1", small, 1, 1.0, answer, 5, 5, "stop"))
    row = _row(engine, none_mode.rows[0])
    assert row.prompt is None and row.response is None and row.content_mode == "none"
    engine.dispose()


def test_trace_timeline_of_a_workflow(pg_url: str) -> None:
    engine = make_engine(pg_url)
    plan = f"plan-{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO workflow_runs (plan_id, event_id, workflow, version, tenant, status, "
                "submitted_at, "
                "started_at, finished_at) VALUES (:p, :p, 'wf', '1', 'default', 'succeeded', now(), "
                "now(), now())"
            ),
            {"p": plan},
        )
    rec = ObservedCallRecorder(engine, plan, "t1", "run-1", schema=SCHEMA, question="what")
    rec(
        CallAttempt(
            "offline-extractive",
            "m1",
            [{"role": "user", "content": "q"}],
            1,
            2.0,
            '{"answer": "x"}',
            3,
            4,
            "stop",
        )
    )
    doc = load_timeline(engine, plan)
    assert (
        doc is not None
        and doc["totals"]["input_tokens"] == 3
        and doc["evaluation"]["schema_valid_rate"] == 1.0
    )
    assert "llm offline-extractive/m1 task t1" in render_timeline(doc)
    engine.dispose()
