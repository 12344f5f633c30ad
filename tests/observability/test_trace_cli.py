"""`agentflow trace`: by plan id or trace id, with the plan's retrievals and tool calls."""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from agentflow_dagster.cli import main
from agentflow_dagster.db import make_engine, migrate
from agentflow_dagster.events import plan_id_for
from agentflow_dagster.settings import get_settings


def _seed(engine: sa.Engine) -> tuple[str, str]:
    """A finished plan with one LLM call, one retrieval and one tool call; (plan_id, trace_id)."""
    plan_id, trace_id = plan_id_for(f"trace-{uuid.uuid4().hex}"), secrets.token_hex(16)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO workflow_runs (plan_id, event_id, workflow, version, tenant, status, trace_id, "
                "submitted_at, started_at, finished_at) VALUES (:p, :e, 'support_triage', '1.0.0', 'acme', "
                "'succeeded', :t, now(), now(), now())"
            ),
            {"p": plan_id, "e": f"ev-{plan_id}", "t": trace_id},
        )
        conn.execute(
            sa.text(
                "INSERT INTO llm_calls (plan_id, task_id, trace_id, provider, model, latency_ms) "
                "VALUES (:p, 'classify', :t, 'offline', 'offline-extractive', 12)"
            ),
            {"p": plan_id, "t": trace_id},
        )
        conn.execute(
            sa.text(
                "INSERT INTO retrievals (plan_id, task_id, trace_id, collection, k, mode, backend, "
                "index_name, latency_ms, hits) VALUES (:p, 'retrieve', :t, 'billing', 5, 'hybrid', "
                "'pgvector', 'rag_billing_g1', 8, CAST(:h AS jsonb))"
            ),
            {"p": plan_id, "t": trace_id, "h": json.dumps([{"chunk_id": "c1"}, {"chunk_id": "c2"}])},
        )
        has_tools = conn.execute(sa.text("SELECT to_regclass('tool_calls') IS NOT NULL")).scalar()
        if has_tools:
            conn.execute(
                sa.text(
                    "INSERT INTO tool_calls (plan_id, task_id, attempt, tool, call_digest, status, "
                    "latency_ms, side_effects) VALUES (:p, 'draft', 1, 'lookup_order', :d, 'ok', 3, 'none')"
                ),
                {"p": plan_id, "d": "ab" * 32},
            )
    return plan_id, trace_id


@pytest.fixture
def db(monkeypatch: pytest.MonkeyPatch, pg_url: str) -> Iterator[sa.Engine]:
    monkeypatch.setenv("AGENTFLOW_POSTGRES_URL", pg_url)
    get_settings.cache_clear()
    engine = make_engine(pg_url)
    yield engine
    engine.dispose()
    get_settings.cache_clear()


def test_trace_by_plan_or_trace_id_lists_retrievals_and_tool_calls(db: sa.Engine) -> None:
    plan_id, trace_id = _seed(db)
    by_plan = CliRunner().invoke(main, ["trace", plan_id])
    by_trace = CliRunner().invoke(main, ["trace", trace_id.upper()])
    assert by_plan.exit_code == 0, by_plan.output
    assert by_trace.output == by_plan.output
    out = by_plan.output
    assert f"plan {plan_id}" in out and f"trace {trace_id}" in out
    assert "retrievals: 1" in out and "billing k=5 mode=hybrid pgvector:rag_billing_g1 2 hits" in out
    assert "tool calls: 1" in out and "tool lookup_order ok" in out

    doc = json.loads(CliRunner().invoke(main, ["trace", trace_id, "--json"]).output)
    assert doc["workflow"]["plan_id"] == plan_id
    assert [r["collection"] for r in doc["retrievals"]] == ["billing"]
    assert [c["tool"] for c in doc["tool_calls"]] == ["lookup_order"]


def test_trace_refuses_what_is_neither_and_reports_unknown_ids(db: sa.Engine) -> None:
    bad = CliRunner().invoke(main, ["trace", "not-an-id"])
    assert bad.exit_code == 2 and "neither a plan id" in bad.output
    unknown = CliRunner().invoke(main, ["trace", secrets.token_hex(16)])
    assert unknown.exit_code == 1 and "no workflow run with plan or trace id" in unknown.output


def test_trace_without_the_tool_calls_table_says_so(monkeypatch: pytest.MonkeyPatch, pg_url: str) -> None:
    """A database migrated before tool calls existed: the rest of the trace still prints."""
    admin = make_engine(pg_url, isolation_level="AUTOCOMMIT")
    name = f"trace_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    url = pg_url.rsplit("/", 1)[0] + f"/{name}"
    migrate(url)
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE tool_calls"))
        plan_id, _ = _seed(engine)
        monkeypatch.setenv("AGENTFLOW_POSTGRES_URL", url)
        get_settings.cache_clear()
        out = CliRunner().invoke(main, ["trace", plan_id])
        assert out.exit_code == 0, out.output
        assert "retrievals: 1" in out.output and "tool calls: not recorded" in out.output
        doc = json.loads(CliRunner().invoke(main, ["trace", plan_id, "--json"]).output)
        assert doc["tool_calls"] is None
    finally:
        engine.dispose()
        get_settings.cache_clear()
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()


def test_version() -> None:
    out = CliRunner().invoke(main, ["--version"])
    assert out.exit_code == 0 and out.output.startswith("agentflow, version ")
    from importlib.metadata import version

    assert out.output.strip().endswith(version("agentflow-dagster"))
