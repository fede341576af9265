"""Fixtures for the servicer layer: a real gRPC server on a free loopback port over a
`FakeEngine`, and a TeacherClient pointed at it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeEngine, write_word_tokenizer

from opd_client import RetryPolicy, TeacherClient
from opd_teacher.config import BatcherConfig, ServerConfig
from opd_teacher.server import TeacherServer

StartServer = Callable[..., Awaitable[TeacherServer]]


@pytest.fixture
def word_tokenizer_dir(tmp_path: Path) -> Path:
    return write_word_tokenizer(tmp_path / "tokenizer")


@pytest.fixture
async def start_server(word_tokenizer_dir: Path) -> AsyncIterator[StartServer]:
    """start_server(engine=None, batcher=BatcherConfig(...), **ServerConfig fields)."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(engine: FakeEngine | None = None, **config: Any) -> TeacherServer:
            engine = engine or FakeEngine(word_tokenizer_dir)
            config.setdefault("batcher", BatcherConfig(max_wait_ms=1.0))
            server = TeacherServer(engine, ServerConfig(host="127.0.0.1", port=0, **config))
            await server.start()
            stack.push_async_callback(server.stop)
            return server

        yield start


@pytest.fixture
async def fake_server(start_server: StartServer) -> TeacherServer:
    return await start_server()


@pytest.fixture
async def client(fake_server: TeacherServer) -> AsyncIterator[TeacherClient]:
    async with TeacherClient(
        f"127.0.0.1:{fake_server.port}",
        timeout_s=10,
        client_name="test-client",
        retry=RetryPolicy(max_attempts=1),
    ) as teacher:
        yield teacher
