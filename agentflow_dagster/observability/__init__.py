"""Observability: OpenTelemetry traces, Prometheus metrics from execution history, LLM call records."""
