"""Health, readiness, drain, auth, reflection and the tokenizer stream of a served fake."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import grpc
import pytest
from fakes import FakeEngine, write_word_tokenizer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tokenizers import Tokenizer

from opd_client import RetryPolicy, TeacherClient, TokenizerMismatchError
from opd_protos import LIVENESS_SERVICE, SERVICE_NAME
from opd_teacher.config import ServerConfig
from opd_teacher.server import TeacherServer

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _status(port: int, service: str) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        return int(reply.status)


async def test_health_turns_serving_after_load_and_liveness_stays_serving_through_drain(
    word_tokenizer_dir: Path,
) -> None:
    engine = FakeEngine(word_tokenizer_dir, delay_s=0.5)
    engine.load_gate.clear()
    server = TeacherServer(engine, ServerConfig(port=0))
    starting = asyncio.create_task(server.start())
    while server.port == 0:
        await asyncio.sleep(0.01)
    try:
        for service in ("", SERVICE_NAME):
            assert await _status(server.port, service) == NOT_SERVING
        assert await _status(server.port, LIVENESS_SERVICE) == SERVING
        async with TeacherClient(
            f"127.0.0.1:{server.port}", timeout_s=5, retry=RetryPolicy(max_attempts=1)
        ) as teacher:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await teacher.score([1, 2], top_k=2)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "loading" in caught.value.details()
            engine.load_gate.set()
            await starting
            for service in ("", SERVICE_NAME, LIVENESS_SERVICE):
                assert await _status(server.port, service) == SERVING
            # A slow request in flight while the drain starts still completes.
            in_flight = asyncio.create_task(teacher.score([1, 2, 3], top_k=2))
            await asyncio.sleep(0.1)
            draining = asyncio.create_task(server.drain())
            await asyncio.sleep(0.05)
            assert await _status(server.port, "") == NOT_SERVING
            assert await _status(server.port, LIVENESS_SERVICE) == SERVING
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await teacher.score([1, 2], top_k=2)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "draining" in caught.value.details()
            assert (await in_flight).num_positions == 3
            await draining
    finally:
        await server.stop()


async def test_full_queue_is_resource_exhausted_at_once(start_server, word_tokenizer_dir) -> None:
    from opd_teacher.config import BatcherConfig

    engine = FakeEngine(word_tokenizer_dir, delay_s=1.0)
    server = await start_server(engine, batcher=BatcherConfig(max_queue=2, max_batch_sequences=1))
    async with TeacherClient(
        f"127.0.0.1:{server.port}", timeout_s=10, retry=RetryPolicy(max_attempts=1)
    ) as teacher:
        running = [asyncio.create_task(teacher.score([1, 2], top_k=1)) for _ in range(3)]
        await asyncio.sleep(0.3)  # one running, two queued
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await teacher.score([1, 2], top_k=1)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_queue 2" in caught.value.details()
        assert loop.time() - started < 0.5, "admission must fail fast, not wait for a slot"
        assert all(r.num_positions == 2 for r in await asyncio.gather(*running))


async def test_auth_token_required_except_for_health_and_reflection(
    start_server, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    server = await start_server(auth_token_file=token_file)
    target = f"127.0.0.1:{server.port}"
    for token in (None, "wrong"):
        async with TeacherClient(target, timeout_s=5, auth_token=token) as teacher:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await teacher.get_info()
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with TeacherClient(target, timeout_s=5, auth_token="s3cret") as teacher:
        assert (await teacher.score([1, 2], top_k=1)).num_positions == 2
    assert await _status(server.port, "") == SERVING
    async with grpc.aio.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = [s.name async for reply in replies for s in reply.list_services_response.service]
    assert SERVICE_NAME in names and "grpc.health.v1.Health" in names


async def test_get_tokenizer_round_trips_a_tokenizer_over_4_mib(
    start_server, tmp_path: Path
) -> None:
    big_dir = write_word_tokenizer(tmp_path / "big", padding_words=120_000)
    assert (big_dir / "tokenizer.json").stat().st_size > 4 << 20
    server = await start_server(FakeEngine(big_dir))
    async with TeacherClient(f"127.0.0.1:{server.port}", timeout_s=30) as teacher:
        files = await teacher.get_tokenizer()
        saved = await teacher.save_tokenizer(tmp_path / "copy")
    assert files["tokenizer.json"] == (big_dir / "tokenizer.json").read_bytes()
    tokenizer = Tokenizer.from_file(str(saved / "tokenizer.json"))
    assert tokenizer.encode("w5 w9").ids == [5, 9]


async def test_tokenizer_mismatch_is_detected(client: TeacherClient, monkeypatch) -> None:
    import opd_client.teacher as teacher_module

    monkeypatch.setattr(teacher_module, "tokenizer_digest", lambda files: "0" * 64)
    with pytest.raises(TokenizerMismatchError):
        await client.get_tokenizer()


async def test_metrics_endpoint_serves_prometheus_text(start_server, free_port: int) -> None:
    server = await start_server(metrics_port=free_port)
    async with TeacherClient(f"127.0.0.1:{server.port}", client_name="metrics-test") as teacher:
        await teacher.score([1, 2, 3], top_k=2)
    body = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{free_port}/metrics", timeout=5).read()
    )
    text = body.decode()
    assert 'opd_teacher_requests_total{client="metrics-test",code="OK",method="Score"} 1.0' in text
    assert 'opd_teacher_scored_positions_total{client="metrics-test"} 3.0' in text
    assert "opd_teacher_batch_sequences_bucket" in text
