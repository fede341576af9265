"""`create_app(settings) -> FastAPI`: the gateway, built fresh for each process or test.

Why this module exists: STYLE.md habit 15 — the app is a factory, nothing is built at
import time. The lifespan opens one `TeacherClient` (which does not connect until the
first call, so the gateway starts even when the teacher is down) and closes it on exit;
routes reach it through `deps.py`. This module wires middleware (body size, metrics),
routers, the static page and the exception handlers that give every error one shape
(`schemas.ErrorResponse`); it holds no logic of its own.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from opd_client import RetryPolicy, TeacherClient
from opd_gateway.deps import GatewayState
from opd_gateway.encoding import OrjsonResponse
from opd_gateway.errors import GatewayError
from opd_gateway.limits import BodySizeLimit, ClientLimiter
from opd_gateway.metrics import GatewayMetrics, MetricsMiddleware
from opd_gateway.routers import health, info, support
from opd_gateway.settings import GatewaySettings
from opd_gateway.teacher_view import TeacherView

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
_HTTP_CODES = {
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "RESOURCE_EXHAUSTED",
}


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    """A gateway app for `settings` (default: from OPD_GATEWAY_* variables)."""
    settings = settings or GatewaySettings()
    state = GatewayState(
        settings=settings,
        metrics=GatewayMetrics(),
        limiter=ClientLimiter(settings.max_concurrency_per_client),
        auth_token=settings.auth_token(),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = TeacherClient(
            settings.teacher_targets,
            timeout_s=settings.timeout_s,
            retry=RetryPolicy(max_attempts=settings.retry_attempts),
            client_name=settings.client_name,
            auth_token=state.auth_token,
        )
        async with client:
            state.client = client
            state.view = TeacherView(client, settings.teacher)
            logger.info(
                "gateway for teacher %s (auth %s)",
                settings.teacher,
                "on" if state.auth_token else "off",
            )
            try:
                yield
            finally:
                state.client = state.view = None

    app = FastAPI(
        title="opd gateway",
        version="0.1.0",
        summary="The teacher's view of any text: per-token log-probs, ranks and top-K.",
        description="HTTP/JSON front of opd's teacher scoring service (gRPC). Log-probs "
        "and surprise are in nats. Errors: 422 invalid input (names the field), 413 body "
        "too large, 429 + Retry-After, 503 teacher unavailable, 504 teacher too slow, 401 "
        "missing/wrong bearer token.",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
    )
    app.state.gateway = state
    # Added last = outermost: metrics see every answer, 413s from the body limit included.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)

    _add_exception_handlers(app)
    app.include_router(support.router)
    app.include_router(info.router)
    app.include_router(health.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    return app


def _add_exception_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, error: GatewayError) -> OrjsonResponse:
        if error.status >= 500:
            logger.warning(
                "%s %s -> %d: %s", request.method, request.url.path, error.status, error.message
            )
        return OrjsonResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> OrjsonResponse:
        problems = [_problem(e) for e in error.errors()]
        first = problems[0] if problems else {"field": "body", "message": "invalid"}
        return OrjsonResponse(
            {
                "detail": "; ".join(f"{p['field']}: {p['message']}" for p in problems),
                "code": "INVALID_ARGUMENT",
                "field": first["field"],
                "errors": problems,
            },
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> OrjsonResponse:
        code = _HTTP_CODES.get(
            error.status_code, "INVALID_ARGUMENT" if error.status_code < 500 else "INTERNAL"
        )
        field = "body" if error.status_code == 413 else None
        return OrjsonResponse(
            {"detail": str(error.detail), "code": code, "field": field},
            status_code=error.status_code,
            headers=dict(error.headers or {}),
        )


def _problem(error: dict[str, object]) -> dict[str, str]:
    """One pydantic error as {field, message}: loc ('body', 'top_k') -> 'top_k'."""
    raw_loc = error.get("loc", ())
    loc = (
        [str(part) for part in raw_loc if part != "body"]
        if isinstance(raw_loc, tuple | list)
        else []
    )
    message = str(error.get("msg", "invalid"))
    if error.get("type") == "json_invalid":
        return {"field": "body", "message": f"not valid JSON ({message})"}
    if not loc:
        # Model-level checks name their fields first: "text, token_ids: give exactly one".
        field, sep, rest = message.removeprefix("Value error, ").partition(": ")
        return {"field": field if sep else "body", "message": rest if sep else message}
    field = loc[0] + "".join(f"[{part}]" if part.isdigit() else f".{part}" for part in loc[1:])
    return {"field": field, "message": message.removeprefix("Value error, ")}
