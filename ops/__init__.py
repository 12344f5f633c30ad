"""Agent-task ops: the op factory that compiles workflow specs into Dagster jobs, retry policies, idempotency."""
