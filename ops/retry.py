"""Dagster retry policies from a task's retry spec."""

from __future__ import annotations

import dagster as dg

from agentflow_dagster.workflows.spec import RetrySpec

_BACKOFF = {"exponential": dg.Backoff.EXPONENTIAL, "linear": dg.Backoff.LINEAR, "none": None}
_JITTER = {"plus_minus": dg.Jitter.PLUS_MINUS, "full": dg.Jitter.FULL, "none": None}


def retry_policy_for(retry: RetrySpec) -> dg.RetryPolicy:
    """The op's RetryPolicy: max_retries, delay, backoff and jitter exactly as the spec says."""
    return dg.RetryPolicy(
        max_retries=retry.max_retries,
        delay=retry.delay_s,
        backoff=_BACKOFF[retry.backoff],
        jitter=_JITTER[retry.jitter],
    )


def is_last_attempt(retry_number: int, retry: RetrySpec) -> bool:
    """True when Dagster will not retry this op again after a failure."""
    return retry_number >= retry.max_retries
