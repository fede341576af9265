"""GET /healthz (liveness), /readyz (the teacher is reachable and SERVING), /metrics.

Why this module exists: an orchestrator restarts a gateway whose /healthz fails and
routes traffic only to one whose /readyz passes. Liveness never touches the teacher
(a teacher outage must not restart every gateway); readiness asks the teacher's
standard grpc.health.v1 service with a short timeout, so probes never hang, and then
warms the cached GetInfo + tokenizer. None of these need a token.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from opd_gateway.deps import StateDep
from opd_gateway.encoding import OrjsonResponse
from opd_gateway.errors import GatewayError
from opd_gateway.schemas import Health

logger = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, response_class=OrjsonResponse)
async def healthz() -> OrjsonResponse:
    """Liveness: the gateway process answers (whatever the teacher's state)."""
    return OrjsonResponse({"status": "ok"})


@router.get(
    "/readyz",
    response_model=Health,
    response_class=OrjsonResponse,
    responses={503: {"model": Health, "description": "the teacher is not reachable or ready"}},
)
async def readyz(state: StateDep) -> OrjsonResponse:
    """Ready when every teacher replica reports SERVING on its readiness service."""
    teacher = state.settings.teacher
    if state.client is None or state.view is None:
        return OrjsonResponse({"status": "not ready", "detail": "starting"}, status_code=503)
    try:
        serving = await asyncio.wait_for(
            state.client.check_health(), timeout=state.settings.ready_timeout_s
        )
    except TimeoutError:
        serving = False
    if not serving:
        return OrjsonResponse(
            {"status": "not ready", "detail": f"the teacher at {teacher} is not SERVING"},
            status_code=503,
        )
    try:
        await state.view.meta()
    except GatewayError as error:
        return OrjsonResponse({"status": "not ready", "detail": error.message}, status_code=503)
    return OrjsonResponse({"status": "ready", "detail": f"teacher {teacher} SERVING"})


@router.get("/metrics", response_class=Response)
async def metrics(state: StateDep) -> Response:
    """Prometheus text format: requests, latency, teacher errors, in-flight, tokens."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
