"""Names and limits that the teacher service and its clients must agree on.

Service names come from the generated descriptor, so a renamed proto package can never
leave health checks or reflection pointing at a stale name.
"""

from __future__ import annotations

from opd.teacher.v1 import teacher_pb2

SERVICE_NAME: str = teacher_pb2.DESCRIPTOR.services_by_name["TeacherService"].full_name
"""Fully qualified gRPC service name, also the readiness health-check service."""

LIVENESS_SERVICE = "liveness"
"""Health-check service that stays SERVING from start until the process exits."""

CLIENT_METADATA_KEY = "x-opd-client"
"""Metadata key naming the calling client; batching fairness and metrics are per client."""

CONTRACT_VERSION = "1.0"

TOKENIZER_CHUNK_BYTES = 1 << 20
"""GetTokenizer streams files in chunks of at most this many bytes (1 MiB)."""

DEFAULT_MAX_MESSAGE_BYTES = 256 << 20


def grpc_message_options(
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> list[tuple[str, int]]:
    """Channel/server options raising gRPC's 4 MiB default on both directions.

    16k positions at K=32 in float32 already reach 4 MiB, so both the server and every
    client set these explicitly.
    """
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


KEEPALIVE_TIME_MS = 30_000
"""Clients ping an idle connection this often; the server permits pings this frequent."""
KEEPALIVE_TIMEOUT_MS = 10_000


def client_keepalive_options() -> list[tuple[str, int]]:
    """Keep-alive for clients: pings every 30 s, even without calls in flight."""
    return [
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # gRPC's reconnect back-off grows to 120 s by default: a client started before its
        # teacher (a gateway, a trainer) would then wait minutes after the teacher is up.
        ("grpc.initial_reconnect_backoff_ms", 500),
        ("grpc.min_reconnect_backoff_ms", 500),
        ("grpc.max_reconnect_backoff_ms", 5000),
    ]


def server_keepalive_options() -> list[tuple[str, int]]:
    """Keep-alive for the server, agreeing with `client_keepalive_options` so that
    clients' pings are never answered with GOAWAY ("too_many_pings")."""
    return [
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
        ("grpc.http2.max_ping_strikes", 0),
    ]
