"""Agent-task ops: the op factory and compiler for workflow specs, retry policies, idempotency."""
