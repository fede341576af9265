"""An engine that dies takes the process down with a non-zero exit code."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from fakes import FakeEngine

from opd_client import RetryPolicy, TeacherClient
from opd_teacher.config import ServerConfig
from opd_teacher.server import run_server


async def test_engine_death_exits_with_code_1(word_tokenizer_dir, free_port: int) -> None:
    engine = FakeEngine(word_tokenizer_dir)
    serving = asyncio.create_task(run_server(engine, ServerConfig(port=free_port)))
    async with TeacherClient(
        f"127.0.0.1:{free_port}", timeout_s=10, retry=RetryPolicy(max_attempts=1)
    ) as teacher:
        await teacher.wait_ready(timeout_s=10)
        engine.fail_next = RuntimeError("device lost")
        engine.healthy = False
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await teacher.score([1, 2], top_k=1)
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        assert "device lost" in caught.value.details()
    assert await asyncio.wait_for(serving, 10) == 1
