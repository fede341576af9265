"""Every teacher failure DESIGN.md §2 lists, as the gateway answers it over HTTP: a
teacher down (503, then 200 once it comes up), a full queue (429 + Retry-After), the
per-client concurrency limit (429 + Retry-After), a slow teacher (504), a teacher that
refuses the gateway's token (401). The teacher is a real gRPC server on a `FakeEngine`
whose gates hold work inside the engine, so each state is reached deterministically."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import FakeEngine, write_word_tokenizer
from processes import free_port

from opd_gateway.app import create_app
from opd_gateway.settings import GatewaySettings
from opd_teacher.config import BatcherConfig, ServerConfig
from opd_teacher.server import TeacherServer

BODY = {"text": "w2 w3 w4 w5", "top_k": 3}
Gateway = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
def tokenizer_dir(tmp_path: Path) -> Path:
    return write_word_tokenizer(tmp_path / "tokenizer")


@pytest.fixture
async def stack() -> AsyncIterator[contextlib.AsyncExitStack]:
    async with contextlib.AsyncExitStack() as exit_stack:
        yield exit_stack


@pytest.fixture
def start_teacher(
    tokenizer_dir: Path, stack: contextlib.AsyncExitStack
) -> Callable[..., Awaitable[TeacherServer]]:
    async def start(engine: FakeEngine | None = None, **config: Any) -> TeacherServer:
        config.setdefault("batcher", BatcherConfig(max_wait_ms=1.0))
        config.setdefault("port", 0)
        server = TeacherServer(
            engine or FakeEngine(tokenizer_dir), ServerConfig(host="127.0.0.1", **config)
        )
        await server.start()
        stack.push_async_callback(server.stop)
        return server

    return start


@pytest.fixture
def gateway(stack: contextlib.AsyncExitStack) -> Gateway:
    """gateway(teacher=ADDRESS, **settings) -> an httpx client on the app, lifespan running."""

    async def make(**overrides: Any) -> httpx.AsyncClient:
        overrides.setdefault("retry_attempts", 1)
        overrides.setdefault("timeout_s", 10)
        app = create_app(GatewaySettings(**overrides))
        await stack.enter_async_context(app.router.lifespan_context(app))
        return await stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")
        )

    return make


async def _until(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_teacher_down_is_503_then_serves_once_it_is_up(
    gateway: Gateway, start_teacher: Callable[..., Awaitable[TeacherServer]]
) -> None:
    port = free_port()
    client = await gateway(teacher=f"127.0.0.1:{port}")
    assert (await client.get("/healthz")).status_code == 200
    ready = await client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "not ready"
    down = await client.post("/v1/support", json=BODY)
    assert down.status_code == 503
    assert down.json()["code"] == "UNAVAILABLE" and f"127.0.0.1:{port}" in down.json()["detail"]
    assert (await client.get("/v1/info")).status_code == 503

    await start_teacher(port=port)  # the teacher comes up: GetInfo/GetTokenizer load lazily
    # gRPC reconnects after its backoff (1 s at first), so the first calls may still fail.
    deadline = asyncio.get_running_loop().time() + 15
    while (up := await client.post("/v1/support", json=BODY)).status_code == 503:
        assert asyncio.get_running_loop().time() < deadline, up.text
        await asyncio.sleep(0.2)
    assert up.status_code == 200, up.text
    assert [t["token"] for t in up.json()["tokens"]] == ["w2", "w3", "w4", "w5"]
    assert (await client.get("/readyz")).status_code == 200


async def test_full_teacher_queue_is_429_with_retry_after(
    gateway: Gateway,
    start_teacher: Callable[..., Awaitable[TeacherServer]],
    tokenizer_dir: Path,
) -> None:
    engine = FakeEngine(tokenizer_dir)
    server = await start_teacher(
        engine, batcher=BatcherConfig(max_wait_ms=0, max_queue=1, max_batch_sequences=1)
    )
    client = await gateway(teacher=f"127.0.0.1:{server.port}")
    assert (await client.get("/v1/info")).status_code == 200  # meta loaded before the gate
    engine.score_gate.clear()
    running = asyncio.create_task(client.post("/v1/support", json=BODY))
    await _until(lambda: len(engine.batches) == 1)  # inside the engine
    queued = asyncio.create_task(client.post("/v1/support", json=BODY))
    await _until(lambda: server.batcher.queued == 1)  # the queue is now full
    rejected = await client.post("/v1/support", json=BODY)
    assert rejected.status_code == 429, rejected.text
    assert rejected.headers["retry-after"] == "1"
    assert rejected.json()["code"] == "RESOURCE_EXHAUSTED"
    engine.score_gate.set()
    assert (await running).status_code == 200 and (await queued).status_code == 200


async def test_per_client_concurrency_is_429_with_retry_after(
    gateway: Gateway,
    start_teacher: Callable[..., Awaitable[TeacherServer]],
    tokenizer_dir: Path,
) -> None:
    engine = FakeEngine(tokenizer_dir)
    server = await start_teacher(engine)
    client = await gateway(teacher=f"127.0.0.1:{server.port}", max_concurrency_per_client=1)
    assert (await client.get("/v1/info")).status_code == 200
    engine.score_gate.clear()
    first = asyncio.create_task(client.post("/v1/support", json=BODY))
    await _until(lambda: len(engine.batches) == 1)
    second = await client.post("/v1/compare", json={"texts": ["w2 w3", "w4 w5"], "top_k": 2})
    assert second.status_code == 429
    assert second.headers["retry-after"] == "1"
    assert "max_concurrency_per_client 1" in second.json()["detail"]
    engine.score_gate.set()
    assert (await first).status_code == 200
    assert (await client.post("/v1/support", json=BODY)).status_code == 200  # slot released


async def test_slow_teacher_is_504(
    gateway: Gateway,
    start_teacher: Callable[..., Awaitable[TeacherServer]],
    tokenizer_dir: Path,
) -> None:
    engine = FakeEngine(tokenizer_dir)
    server = await start_teacher(engine)
    client = await gateway(teacher=f"127.0.0.1:{server.port}", timeout_s=0.5)
    assert (await client.get("/v1/info")).status_code == 200
    engine.score_gate.clear()
    try:
        slow = await client.post("/v1/support", json=BODY)
    finally:
        engine.score_gate.set()
    assert slow.status_code == 504, slow.text
    assert slow.json()["code"] == "DEADLINE_EXCEEDED"


async def test_teacher_refusing_the_token_is_401(
    gateway: Gateway, start_teacher: Callable[..., Awaitable[TeacherServer]], tmp_path: Path
) -> None:
    teacher_token = tmp_path / "teacher-token"
    teacher_token.write_text("teacher-secret")
    server = await start_teacher(auth_token_file=teacher_token)
    without = await gateway(teacher=f"127.0.0.1:{server.port}")
    refused = await without.post("/v1/support", json=BODY)
    assert refused.status_code == 401 and refused.json()["code"] == "UNAUTHENTICATED"
    assert "credentials" in refused.json()["detail"]

    # With the same token the gateway requires it of its clients and passes it on.
    with_token = await gateway(teacher=f"127.0.0.1:{server.port}", auth_token_file=teacher_token)
    headers = {"Authorization": "Bearer teacher-secret"}
    assert (await with_token.post("/v1/support", json=BODY, headers=headers)).status_code == 200
    assert (await with_token.post("/v1/support", json=BODY)).status_code == 401


async def test_invalid_argument_carries_the_teachers_message(
    gateway: Gateway, start_teacher: Callable[..., Awaitable[TeacherServer]]
) -> None:
    server = await start_teacher()
    client = await gateway(teacher=f"127.0.0.1:{server.port}")
    response = await client.post("/v1/support", json={"token_ids": [1, 2, 64], "top_k": 2})
    assert response.status_code == 422
    assert response.json() == {
        "detail": "token_ids: token_ids[2] = 64 is outside [0, vocab_size 64)",
        "code": "INVALID_ARGUMENT",
        "field": "token_ids",
    }
    metrics = (await client.get("/metrics")).text
    assert 'opd_gateway_teacher_errors_total{code="INVALID_ARGUMENT"} 1.0' in metrics
