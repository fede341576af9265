"""Prometheus metrics of one teacher service instance.

Each service owns its registry (no module globals), so tests can run several servers in
one process and read the values directly. Labels are per client (`x-opd-client`),
because fairness between student jobs is what operators need to see.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_SEQUENCE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "opd_teacher_requests",
            "Score requests answered, by method, status code and client.",
            ["method", "code", "client"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "opd_teacher_queue_depth", "Jobs waiting for a batch.", registry=self.registry
        )
        self.batch_sequences = Histogram(
            "opd_teacher_batch_sequences",
            "Sequences per engine batch.",
            buckets=_SEQUENCE_BUCKETS,
            registry=self.registry,
        )
        self.batch_tokens = Histogram(
            "opd_teacher_batch_tokens",
            "Padded tokens per engine batch.",
            buckets=_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.scored_positions = Counter(
            "opd_teacher_scored_positions",
            "Rows returned to clients.",
            ["client"],
            registry=self.registry,
        )
        self.request_latency = Histogram(
            "opd_teacher_request_latency_seconds",
            "Time from a request's arrival to its answer.",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "opd_teacher_queue_wait_seconds",
            "Time a job waited before its batch ran.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.expired_before_run = Counter(
            "opd_teacher_expired_before_run",
            "Jobs whose deadline passed while queued; they never ran.",
            registry=self.registry,
        )
