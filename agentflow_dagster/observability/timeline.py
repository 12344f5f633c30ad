"""A workflow's timeline from Postgres: the run, each task attempt, each LLM call, with totals."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from agentflow_dagster.observability.evaluation import summarize


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


def _rows(conn: sa.Connection, sql: str, **params: Any) -> list[dict[str, Any]]:
    return [{k: _plain(v) for k, v in row._mapping.items()} for row in conn.execute(sa.text(sql), params)]


def load_timeline(engine: sa.Engine, plan_id: str) -> dict[str, Any] | None:
    """The plan's workflow row, task attempts and LLM calls (None when the plan is unknown)."""
    with engine.connect() as conn:
        runs = _rows(
            conn,
            "SELECT plan_id, event_id, workflow, version, tenant, status, trace_id, error, dagster_run_ids, "
            "submitted_at, started_at, finished_at FROM workflow_runs WHERE plan_id = :p",
            p=plan_id,
        )
        if not runs:
            return None
        tasks = _rows(
            conn,
            "SELECT task_id, agent, run_id, attempt, status, reused, error, input_tokens, output_tokens, "
            "cost_usd, "
            "started_at, finished_at FROM task_runs WHERE plan_id = :p ORDER BY started_at, id",
            p=plan_id,
        )
        calls = _rows(
            conn,
            "SELECT id, created_at, task_id, run_id, trace_id, span_id, provider, model, latency_ms, "
            "input_tokens, "
            "output_tokens, cost_usd, finish_reason, cache_hit, attempt, error, evaluation, prompt_ref, "
            "response_ref "
            "FROM llm_calls WHERE plan_id = :p ORDER BY created_at, id",
            p=plan_id,
        )
    totals = {
        "llm_calls": len(calls),
        "llm_errors": sum(1 for c in calls if c["error"]),
        "input_tokens": sum(c["input_tokens"] or 0 for c in calls),
        "output_tokens": sum(c["output_tokens"] or 0 for c in calls),
        "cost_usd": round(sum(c["cost_usd"] or 0.0 for c in calls), 6),
        # Answered calls of a model with no known price: their cost is unknown, not $0.
        "unpriced_calls": sum(1 for c in calls if c["cost_usd"] is None and not c["error"]),
        "llm_latency_ms": round(sum(c["latency_ms"] or 0.0 for c in calls), 1),
        "task_attempts": len(tasks),
        "task_failures": sum(1 for t in tasks if t["status"] == "failed"),
    }
    return {
        "workflow": runs[0],
        "tasks": tasks,
        "llm_calls": calls,
        "totals": totals,
        "evaluation": summarize(c["evaluation"] or {} for c in calls),
    }


def _at(value: str | None, origin: datetime | None) -> str:
    if value is None or origin is None:
        return "       -"
    return f"{(datetime.fromisoformat(value) - origin).total_seconds():+8.2f}s"


def usd(cost: float | None, unpriced: int = 0, answered: int = 0) -> str:
    """A cost for people: `unknown` when no price is known, never a made-up $0."""
    if cost is None or (answered and unpriced == answered):
        return "unknown (no price for the model)"
    more = f" + unknown for {unpriced} unpriced calls" if unpriced else ""
    return f"${float(cost):.6f}{more}"


def render_timeline(doc: dict[str, Any]) -> str:
    """The timeline as text: offsets from submission, one line per task attempt and per LLM call."""
    wf = doc["workflow"]
    origin_raw = wf["submitted_at"] or wf["started_at"]
    origin = datetime.fromisoformat(origin_raw) if origin_raw else None
    lines = [
        f"plan {wf['plan_id']}  workflow {wf['workflow']} {wf['version']}  tenant {wf['tenant']}  "
        f"status {wf['status']}  trace {wf['trace_id'] or '-'}",
        f"  {_at(wf['submitted_at'], origin)}  submitted (event {wf['event_id']})",
        f"  {_at(wf['started_at'], origin)}  started",
    ]
    events: list[tuple[str, str]] = []
    for t in doc["tasks"]:
        took = ""
        if t["finished_at"]:
            spent = datetime.fromisoformat(t["finished_at"]) - datetime.fromisoformat(t["started_at"])
            took = f" {spent.total_seconds():.2f}s"
        flag = " reused" if t["reused"] else ""
        err = f"  error: {t['error'][:160]}" if t["error"] else ""
        events.append(
            (
                t["started_at"],
                f"  {_at(t['started_at'], origin)}  task {t['task_id']} ({t['agent']}) attempt "
                f"{t['attempt']} "
                f"{t['status']}{flag}{took} tokens {t['input_tokens']}/{t['output_tokens']} "
                f"cost ${float(t['cost_usd'] or 0):.6f}{err}",
            )
        )
    for c in doc["llm_calls"]:
        ev = c["evaluation"] or {}
        score = ""
        if ev:
            score = (
                f" eval schema={ev.get('schema_valid')} grounded={ev.get('groundedness')} "
                f"relevance={ev.get('answer_relevance')}"
            )
        err = f"  error: {c['error'][:160]}" if c["error"] else ""
        events.append(
            (
                c["created_at"],
                f"  {_at(c['created_at'], origin)}    llm {c['provider']}/{c['model']} task {c['task_id']} "
                f"attempt {c['attempt']} {c['latency_ms'] or 0:.0f}ms tokens "
                f"{c['input_tokens']}/{c['output_tokens']} "
                f"{usd(c['cost_usd'])} finish={c['finish_reason']}{score}{err}",
            )
        )
    lines += [text for _, text in sorted(events, key=lambda e: e[0])]
    lines.append(
        f"  {_at(wf['finished_at'], origin)}  finished {wf['status']}"
        + (f": {wf['error'][:300]}" if wf["error"] else "")
    )
    t = doc["totals"]
    lines.append(
        f"totals: {t['task_attempts']} task attempts ({t['task_failures']} failed), {t['llm_calls']} LLM "
        f"calls "
        f"({t['llm_errors']} errors), tokens {t['input_tokens']} in / {t['output_tokens']} out, "
        f"cost {usd(t['cost_usd'], t['unpriced_calls'], t['llm_calls'] - t['llm_errors'])}, "
        f"LLM time {t['llm_latency_ms']:.0f}ms"
    )
    e = doc["evaluation"]
    lines.append(
        f"evaluation: {e['evaluated_calls']} calls, schema-valid rate {e['schema_valid_rate']}, "
        f"mean groundedness {e['mean_groundedness']}, mean answer relevance {e['mean_answer_relevance']}"
    )
    return "\n".join(lines)
