"""Request limits the gateway enforces before any work: body size, UTF-8, concurrency.

Why this module exists: a debugging page on a shared teacher must not let one client
exhaust it. `BodySizeLimit` is a pure ASGI middleware: it answers 413 from the
Content-Length header without reading the body, and counts the bytes of a streamed
(chunked) body as they arrive, so an oversized body is never buffered. `StrictJsonRoute`
answers 422 for a body that is not UTF-8, where FastAPI alone would say 400.
`ClientLimiter` caps the requests one client has in flight (429 + Retry-After).
This module knows ASGI and FastAPI's route class, not the teacher.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opd_gateway.errors import invalid, too_busy


def _too_large(limit: int) -> str:
    return f"body: larger than max_body_bytes {limit}"


class BodySizeLimit:
    """413 for any HTTP request body over `max_bytes`, decided before it is buffered."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _send_413(send, self.max_bytes)
            return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the route's body read: FastAPI re-raises HTTPException
                    # and the app's handler answers 413 (the response has not started).
                    raise HTTPException(413, _too_large(self.max_bytes))
            return message

        await self.app(scope, counted_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_413(send: Send, limit: int) -> None:
    body = orjson.dumps(
        {"detail": _too_large(limit), "code": "RESOURCE_EXHAUSTED", "field": "body"}
    )
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class StrictJsonRoute(APIRoute):
    """An APIRoute whose JSON bodies must be UTF-8: 422 naming `body` otherwise."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            if request.method in ("POST", "PUT", "PATCH"):
                body = await request.body()  # cached: FastAPI's parser reads it again
                try:
                    body.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise invalid(
                        "body", f"not UTF-8 (byte {error.start}: {body[error.start]:#04x})"
                    ) from error
            return await handler(request)

        return strict_handler


def client_key(request: Request) -> str:
    """Who a request is from, for per-client limits: the peer's address."""
    return request.client.host if request.client else "unknown"


class ClientLimiter:
    """At most `limit` requests in flight per client key; the next one gets 429."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._active: dict[str, int] = {}

    @contextmanager
    def slot(self, key: str) -> Iterator[None]:
        # One event loop runs all requests, and nothing awaits between check and
        # increment, so no lock is needed.
        active = self._active.get(key, 0)
        if active >= self.limit:
            raise too_busy(
                f"client {key} already has {active} requests in flight "
                f"(max_concurrency_per_client {self.limit})"
            )
        self._active[key] = active + 1
        try:
            yield
        finally:
            remaining = self._active[key] - 1
            if remaining:
                self._active[key] = remaining
            else:
                del self._active[key]

    def in_flight(self, key: str) -> int:
        return self._active.get(key, 0)
