"""Prometheus metrics of one gateway app, in the app's own registry.

Why this module exists: /metrics must say how the gateway itself behaves (requests by
route and status, latency, teacher errors by code, requests in flight) next to the
teacher's own metrics. Each app gets a fresh `CollectorRegistry`, so two apps in one
process (tests) never share counters and nothing is registered at import time.
`MetricsMiddleware` is pure ASGI; it labels by route template, never by raw path.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_LATENCY_BUCKETS_S = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "opd_gateway_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "opd_gateway_request_seconds",
            "Time from request to the end of the response, by route template",
            ["route"],
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "opd_gateway_requests_in_flight", "HTTP requests being handled", registry=self.registry
        )
        self.teacher_errors = Counter(
            "opd_gateway_teacher_errors",
            "Failed teacher calls, by gRPC status code",
            ["code"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "opd_gateway_scored_tokens", "Tokens scored through the gateway", registry=self.registry
        )


class MetricsMiddleware:
    """Counts and times every HTTP request into `metrics`."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, record_status)
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(template, scope.get("method", ""), str(status)).inc()
            self.metrics.latency.labels(template).observe(time.perf_counter() - start)
