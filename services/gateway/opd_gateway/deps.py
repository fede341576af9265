"""Typed FastAPI dependencies: what a route may ask for, and auth.

Why this module exists: routes get the teacher client, the teacher's meta, the settings
and a per-client slot through `Depends`, never from globals, so an app built by
`create_app` in a test carries its own of each (STYLE.md habit 15). `GatewayState` is
what the lifespan puts on `app.state.gateway`; this module only reads it. Every
dependency is `async def`: FastAPI would run a plain `def` one in a worker thread.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from opd_client import TeacherClient
from opd_gateway.errors import GatewayError
from opd_gateway.limits import ClientLimiter, client_key
from opd_gateway.metrics import GatewayMetrics
from opd_gateway.settings import GatewaySettings
from opd_gateway.teacher_view import TeacherMeta, TeacherView


@dataclass
class GatewayState:
    """Everything one app holds; the client and view exist only inside the lifespan."""

    settings: GatewaySettings
    metrics: GatewayMetrics
    limiter: ClientLimiter
    auth_token: str | None
    client: TeacherClient | None = None
    view: TeacherView | None = None


async def get_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


StateDep = Annotated[GatewayState, Depends(get_state)]


async def get_settings(state: StateDep) -> GatewaySettings:
    return state.settings


async def get_client(state: StateDep) -> TeacherClient:
    if state.client is None:
        raise GatewayError(503, "UNAVAILABLE", "the gateway is starting or stopping")
    return state.client


async def get_view(state: StateDep) -> TeacherView:
    if state.view is None:
        raise GatewayError(503, "UNAVAILABLE", "the gateway is starting or stopping")
    return state.view


async def get_meta(view: Annotated[TeacherView, Depends(get_view)]) -> TeacherMeta:
    """The teacher's info and tokenizer (fetched on first use; 503 while unreachable)."""
    return await view.meta()


async def require_token(request: Request, state: StateDep) -> None:
    """401 unless the request carries the configured bearer token (no-op without one)."""
    if state.auth_token is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise GatewayError(
            401,
            "UNAUTHENTICATED",
            "this gateway needs 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(given.strip().encode(), state.auth_token.encode()):
        raise GatewayError(
            401, "UNAUTHENTICATED", "invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
        )


async def client_slot(request: Request, state: StateDep) -> AsyncIterator[None]:
    """Holds one of the client's `max_concurrency_per_client` slots for the request."""
    with state.limiter.slot(client_key(request)):
        yield


SettingsDep = Annotated[GatewaySettings, Depends(get_settings)]
ClientDep = Annotated[TeacherClient, Depends(get_client)]
ViewDep = Annotated[TeacherView, Depends(get_view)]
MetaDep = Annotated[TeacherMeta, Depends(get_meta)]
SlotDep = Annotated[None, Depends(client_slot)]
