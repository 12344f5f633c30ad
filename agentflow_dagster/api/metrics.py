"""The gateway's own Prometheus metrics (one registry per app; no tenant labels on a public endpoint).

With several worker processes (`agentflow api --workers N`), PROMETHEUS_MULTIPROC_DIR is set and every
worker writes its values to files there; /metrics then sums all workers (prometheus_client's
multiprocess mode), so a scrape answered by any worker shows the whole server.
"""

from __future__ import annotations

import os
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ApiMetrics:
    """Counters and latency histograms for requests, submissions, rejections, uploads and approvals."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "agentflow_api_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "agentflow_api_request_seconds",
            "Time to answer (to the first byte for streams)",
            ["method", "route"],
            registry=self.registry,
        )
        self.submitted = Counter(
            "agentflow_api_workflows_submitted",
            "Workflow requests published to Kafka (replayed = answered from an Idempotency-Key)",
            ["workflow", "replayed"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "agentflow_api_rejected",
            "Requests refused before any work: auth, scope, rate_limit, token_budget, body_too_large",
            ["reason"],
            registry=self.registry,
        )
        self.documents = Counter(
            "agentflow_api_documents_uploaded", "Documents stored and announced", registry=self.registry
        )
        self.approvals = Counter(
            "agentflow_api_approvals", "Approval decisions published", ["decision"], registry=self.registry
        )
        self.open_streams = Gauge(
            "agentflow_api_open_streams",
            "Server-sent event streams open now",
            registry=self.registry,
            multiprocess_mode="livesum",
        )

    def render(self) -> bytes:
        """This app's metrics, or every worker's summed when running in multiprocess mode."""
        if path := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=path)
            return generate_latest(registry)
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every answer by route template (never the raw path, which holds ids)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
                self.metrics.latency.labels(scope["method"], _route(scope)).observe(
                    time.perf_counter() - start
                )
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            self.metrics.requests.labels(scope["method"], _route(scope), str(status["code"])).inc()


def _route(scope: Scope) -> str:
    return str(getattr(scope.get("route"), "path", "unmatched"))
