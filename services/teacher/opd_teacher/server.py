"""The teacher service's lifecycle: start, load, serve, drain, stop.

Order matters and each step is logged. Start: liveness SERVING and readiness NOT_SERVING
before the model loads, so probes answer at once; readiness turns SERVING after the
engine's warm-up. SIGTERM: readiness NOT_SERVING → stop admitting (new calls get
UNAVAILABLE) → in-flight work finishes (liveness still SERVING, health still answers) →
`server.stop(grace)` → `engine.shutdown()`. An engine that fails its health check
takes the process down with exit code 1 so the orchestrator restarts it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from opd.teacher.v1 import teacher_pb2, teacher_pb2_grpc
from opd_protos import LIVENESS_SERVICE, SERVICE_NAME, grpc_message_options
from opd_protos.names import server_keepalive_options
from opd_teacher.auth import BearerTokenInterceptor
from opd_teacher.batcher import Batcher
from opd_teacher.config import ServerConfig
from opd_teacher.engine.base import ScoringEngine
from opd_teacher.metrics import ServiceMetrics
from opd_teacher.servicer import Lifecycle, TeacherServicer

logger = logging.getLogger(__name__)

READINESS_SERVICES = ("", SERVICE_NAME)


class TeacherServer:
    """`async with TeacherServer(engine, config) as server:` serves until the block ends."""

    def __init__(self, engine: ScoringEngine, config: ServerConfig) -> None:
        self.engine = engine
        self.config = config
        self.metrics = ServiceMetrics()
        self.lifecycle = Lifecycle()
        self.health = health.aio.HealthServicer()
        self.batcher = Batcher(engine, config.batcher, self.metrics)
        self.port: int = 0
        self.metrics_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._metrics_http: Any = None

    async def __aenter__(self) -> TeacherServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        token = self.config.auth_token()
        self._server = grpc.aio.server(
            options=grpc_message_options(self.config.max_message_bytes)
            + server_keepalive_options(),
            interceptors=[BearerTokenInterceptor(token)] if token else [],
        )
        servicer = TeacherServicer(
            self.engine,
            self.batcher,
            self.metrics,
            self.lifecycle,
            max_top_k=self.config.max_top_k,
            max_stream_inflight=self.config.max_stream_inflight,
        )
        teacher_pb2_grpc.add_TeacherServiceServicer_to_server(servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (
                teacher_pb2.DESCRIPTOR.services_by_name["TeacherService"].full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self._server,
        )
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        for name in READINESS_SERVICES:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.port = self._server.add_insecure_port(f"{self.config.host}:{self.config.port}")
        await self._server.start()
        logger.info("gRPC listening on %s:%d (model loading)", self.config.host, self.port)
        if self.config.metrics_port is not None:
            self._metrics_http, _ = start_http_server(
                self.config.metrics_port, addr=self.config.host, registry=self.metrics.registry
            )
            self.metrics_port = self._metrics_http.server_port
            logger.info("metrics on http://%s:%d/metrics", self.config.host, self.metrics_port)
        await self.engine.load()
        await self.batcher.__aenter__()
        self.lifecycle.ready = True
        for name in READINESS_SERVICES:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        logger.info("ready: %s (%s backend)", self.engine.info.model, self.engine.info.backend)

    async def drain(self) -> None:
        """Readiness NOT_SERVING, refuse new work, let in-flight work finish."""
        logger.info("drain: readiness NOT_SERVING")
        self.lifecycle.draining = True
        for name in READINESS_SERVICES:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        logger.info("drain: waiting up to %.1f s for in-flight work", self.config.drain_timeout_s)
        if not await self.batcher.drain(self.config.drain_timeout_s):
            logger.warning("drain: timed out with %d jobs queued", self.batcher.queued)

    async def stop(self) -> None:
        if self._server is None:
            return
        if not self.lifecycle.draining:
            await self.drain()
        logger.info("stop: closing the gRPC server")
        await self._server.stop(grace=1.0)
        await self.batcher.close()
        logger.info("stop: shutting the engine down")
        await self.engine.shutdown()
        await self.health.enter_graceful_shutdown()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
        self._server = None
        logger.info("stopped")


async def run_server(engine: ScoringEngine, config: ServerConfig) -> int:
    """Serves until SIGTERM/SIGINT (exit 0) or until the engine dies (exit 1)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        logger.info("received %s", sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    async with TeacherServer(engine, config) as server:
        stop_wait = asyncio.create_task(stop.wait())
        failed_wait = asyncio.create_task(server.batcher.engine_failed.wait())
        await asyncio.wait({stop_wait, failed_wait}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        failed_wait.cancel()
        engine_failed = server.batcher.engine_failed.is_set()
    return 1 if engine_failed else 0
