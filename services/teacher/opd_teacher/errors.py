"""The service's one error hierarchy; status codes are chosen only at the gRPC boundary.

Code inside the service raises these typed errors; `servicer.py` maps each to its gRPC
status (and the gateway maps the same codes to HTTP). Anything that is not an `OpdError`
is a bug: it is logged with its traceback and answered `INTERNAL`.
"""

from __future__ import annotations

import grpc


class OpdError(Exception):
    """Base of the errors a client can cause or see; `code` is its gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class ValidationError(OpdError):
    """Bad input: names the offending field and the limit it broke."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class QueueFullError(OpdError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnavailableError(OpdError):
    """The model is still loading, or the service is draining."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(OpdError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class UnimplementedError(OpdError):
    """A feature this backend lacks (e.g. extra_ids), so the client can fall back."""

    code = grpc.StatusCode.UNIMPLEMENTED
