"""Container health check for opd's images: exit 0 when healthy, 1 otherwise.

Why this file exists: Docker's HEALTHCHECK (and compose's `condition: service_healthy`)
needs a command inside the image. The images already carry Python and grpcio (with
grpcio-health-checking), so this replaces a separately downloaded grpc_health_probe.
Kubernetes does not use it: its native gRPC probes ask the same health services.

    python healthcheck.py grpc 127.0.0.1:50051 opd.teacher.v1.TeacherService   # readiness
    python healthcheck.py grpc teacher:50051 liveness                           # reachable
    python healthcheck.py http http://127.0.0.1:8000/healthz

It knows nothing of opd beyond the command line: service names come from the caller
(tests/deploy checks them against `opd_protos.names`). Health needs no token.
"""

from __future__ import annotations

import sys
import urllib.request

TIMEOUT_S = 3.0


def grpc_serving(target: str, service: str) -> bool:
    """True when `target`'s grpc.health.v1 service `service` answers SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S)
        except grpc.RpcError as error:
            print(f"unhealthy: {target} {service!r}: {error.code().name}", file=sys.stderr)
            return False
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        print(f"unhealthy: {target} {service!r}: {name}", file=sys.stderr)
        return False
    return True


def http_ok(url: str) -> bool:
    """True when a GET of `url` answers 2xx."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return 200 <= int(response.status) < 300
    except OSError as error:  # URLError and HTTPError are OSErrors
        print(f"unhealthy: {url}: {error}", file=sys.stderr)
        return False


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "grpc":
        return 0 if grpc_serving(argv[1], argv[2]) else 1
    if len(argv) == 2 and argv[0] == "http":
        return 0 if http_ok(argv[1]) else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
