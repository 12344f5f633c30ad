"""Write every LLM attempt to the `llm_calls` table."""

from __future__ import annotations

import json
from dataclasses import dataclass

import sqlalchemy as sa

from agentflow_dagster.llm.types import CallAttempt

_INSERT = sa.text(
    "INSERT INTO llm_calls (plan_id, task_id, run_id, trace_id, provider, model, prompt, response, "
    "latency_ms, input_tokens, output_tokens, cost_usd, finish_reason, attempt, error) "
    "VALUES (:plan_id, :task_id, :run_id, :trace_id, :provider, :model, CAST(:prompt AS jsonb), :response, "
    ":latency_ms, :input_tokens, :output_tokens, :cost_usd, :finish_reason, :attempt, :error)"
)


@dataclass
class PostgresCallRecorder:
    """A recorder bound to one task execution; each call inserts one row."""

    engine: sa.Engine
    plan_id: str | None
    task_id: str | None
    run_id: str | None
    trace_id: str | None = None

    def __call__(self, attempt: CallAttempt) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                _INSERT,
                {
                    "plan_id": self.plan_id,
                    "task_id": self.task_id,
                    "run_id": self.run_id,
                    "trace_id": self.trace_id,
                    "provider": attempt.provider,
                    "model": attempt.model,
                    "prompt": json.dumps(attempt.messages),
                    "response": attempt.response,
                    "latency_ms": attempt.latency_ms,
                    "input_tokens": attempt.input_tokens,
                    "output_tokens": attempt.output_tokens,
                    "cost_usd": attempt.cost_usd,
                    "finish_reason": attempt.finish_reason,
                    "attempt": attempt.attempt,
                    "error": attempt.error,
                },
            )
