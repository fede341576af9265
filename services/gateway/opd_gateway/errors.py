"""The gateway's one error type and the map from the teacher's gRPC codes to HTTP.

Why this module exists: DESIGN.md §2 fixes how a teacher status reads over HTTP —
INVALID_ARGUMENT 422 with the teacher's own message, RESOURCE_EXHAUSTED 429 +
Retry-After, UNAVAILABLE 503, DEADLINE_EXCEEDED 504, UNAUTHENTICATED 401 — and every
route must answer the same way, so the mapping is written once here. Errors inside the
gateway are `GatewayError`s; the handlers in `app.py` turn them into one JSON shape:
`{"detail": <readable message>, "code": <gRPC-style code>, "field": <name or null>}`.
This module knows grpc status codes and HTTP numbers, not FastAPI routes.
"""

from __future__ import annotations

import re
from typing import Any

import grpc

RETRY_AFTER_S = 1
"""Retry-After (seconds) sent with every 429: the teacher's queue drains in well under that."""

_FIELD_PREFIX = re.compile(r"^([A-Za-z_][A-Za-z0-9_.\[\]]*): ")


class GatewayError(Exception):
    """An answer other than 200: status, a message a person can act on, the field at fault."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"detail": self.message, "code": self.code, "field": self.field}


def invalid(field: str, problem: str) -> GatewayError:
    """422 for bad input found by the gateway itself, worded like the teacher's messages."""
    return GatewayError(422, "INVALID_ARGUMENT", f"{field}: {problem}", field=field)


def too_busy(message: str) -> GatewayError:
    return GatewayError(
        429, "RESOURCE_EXHAUSTED", message, headers={"Retry-After": str(RETRY_AFTER_S)}
    )


def field_of(message: str) -> str | None:
    """'top_k: 300 is not in 1..256' -> 'top_k' (the teacher names the field first)."""
    match = _FIELD_PREFIX.match(message)
    if match is None:
        return None
    return match.group(1).split("[")[0]


def from_rpc_error(error: grpc.RpcError, teacher: str) -> GatewayError:
    """The HTTP answer for a failed teacher call to `teacher` (its address, for messages)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return GatewayError(422, code.name, details, field=field_of(details))
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return too_busy(f"the teacher is busy, retry in {RETRY_AFTER_S} s: {details}")
    if code == grpc.StatusCode.UNAVAILABLE:
        return GatewayError(
            503, code.name, f"the teacher at {teacher} is unavailable: {_first_line(details)}"
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return GatewayError(
            504, code.name, f"the teacher at {teacher} did not answer in time: {details}"
        )
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return GatewayError(
            401,
            code.name,
            f"the teacher refused the gateway's credentials: {details}",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return GatewayError(501, code.name, f"the teacher does not implement this: {details}")
    return GatewayError(502, code.name, f"the teacher failed ({code.name}): {details}")


def _first_line(details: str) -> str:
    # grpc's connection errors carry a multi-line debug string; the first line reads well.
    return details.strip().splitlines()[0] if details.strip() else "no answer"
