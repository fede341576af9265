"""The client SDK against fake-engine servers: retries, replicas, the sync wrapper."""

from __future__ import annotations

import asyncio
import random

import grpc
import numpy as np
import pytest
from fakes import FakeEngine, fake_logprobs

from opd_client import RetryPolicy, SyncTeacherClient, TeacherClient
from opd_client.balancing import parse_targets
from opd_client.retry import is_retryable
from opd_teacher.config import BatcherConfig


def test_backoff_is_jittered_exponential_and_capped() -> None:
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=1.0, multiplier=2.0)
    rng = random.Random(0)
    for attempt, bound in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        waits = [policy.backoff_s(attempt, rng) for _ in range(200)]
        assert min(waits) >= 0 and max(waits) <= bound
        assert max(waits) > 0.8 * bound, "full jitter spans the whole range"
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


def test_targets_parse_from_strings_and_lists() -> None:
    assert parse_targets("a:1, b:2") == ["a:1", "b:2"]
    assert parse_targets(["dns:///teacher:50051"]) == ["dns:///teacher:50051"]
    with pytest.raises(ValueError, match="targets"):
        parse_targets(" , ")


async def test_calls_round_robin_over_replicas_and_fail_over(
    start_server, word_tokenizer_dir
) -> None:
    engines = [FakeEngine(word_tokenizer_dir) for _ in range(2)]
    servers = [await start_server(engine) for engine in engines]
    targets = [f"127.0.0.1:{s.port}" for s in servers]
    async with TeacherClient(targets, timeout_s=10) as teacher:
        for i in range(6):
            await teacher.score([1, 2, 3 + i], top_k=2)
        assert [len(e.batches) for e in engines] == [3, 3]
        await servers[0].drain()  # replica 0 now answers UNAVAILABLE
        for i in range(4):
            out = await teacher.score([1, 2, 3 + i], top_k=2)
            expected = fake_logprobs(np.array([1, 2, 3 + i], dtype=np.int32)).topk(2).indices
            np.testing.assert_array_equal(out.topk_ids_PK, expected.numpy())
        assert len(engines[1].batches) == 7, "every call after the drain went to replica 1"


async def test_a_dead_replica_stops_taking_turns(
    start_server, word_tokenizer_dir, free_port: int
) -> None:
    """Streams have no per-call retry, so one sent to a dead replica fails: once its
    channel is failing, round-robin passes over it and every stream reaches the live one."""
    engine = FakeEngine(word_tokenizer_dir)
    live = await start_server(engine)
    targets = [f"127.0.0.1:{free_port}", f"127.0.0.1:{live.port}"]  # nothing on free_port
    async with TeacherClient(targets, timeout_s=10) as teacher:
        await teacher.score([1, 2, 3], top_k=2)  # may try the dead one first, then fails over
        for i in range(6):
            async with teacher.stream() as stream:
                out = await stream.score([1, 2, 3 + i], top_k=2)
            assert out.topk_ids_PK.shape == (3, 2)
    assert len(engine.batches) == 7


async def test_resource_exhausted_is_retried_until_admitted(
    start_server, word_tokenizer_dir
) -> None:
    engine = FakeEngine(word_tokenizer_dir, delay_s=0.3)
    server = await start_server(engine, batcher=BatcherConfig(max_queue=1, max_batch_sequences=1))
    target = f"127.0.0.1:{server.port}"
    policy = RetryPolicy(max_attempts=20, initial_backoff_s=0.05, max_backoff_s=0.2)
    async with (
        TeacherClient(target, timeout_s=10, retry=RetryPolicy(max_attempts=1)) as plain,
        TeacherClient(target, timeout_s=10, retry=policy) as patient,
    ):
        occupying = [asyncio.create_task(plain.score([1, 2], top_k=1)) for _ in range(2)]
        await asyncio.sleep(0.1)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await plain.score([1, 2], top_k=1)
        assert is_retryable(caught.value)
        out = await patient.score([1, 2, 3], top_k=1)
        assert out.num_positions == 3
        await asyncio.gather(*occupying)


async def test_invalid_argument_is_not_retried(start_server, word_tokenizer_dir) -> None:
    engine = FakeEngine(word_tokenizer_dir)
    server = await start_server(engine)
    async with TeacherClient(f"127.0.0.1:{server.port}", timeout_s=10) as teacher:
        started = asyncio.get_running_loop().time()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await teacher.score([1, 2], top_k=999)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert asyncio.get_running_loop().time() - started < 1.0
    requests = server.metrics.registry.get_sample_value(
        "opd_teacher_requests_total",
        {"method": "Score", "code": "INVALID_ARGUMENT", "client": teacher.client_name},
    )
    assert requests == 1.0


async def test_sync_client_scores_from_plain_code(fake_server) -> None:
    def use_sync() -> tuple[int, bool]:
        with SyncTeacherClient(f"127.0.0.1:{fake_server.port}", timeout_s=10) as teacher:
            out = teacher.score([1, 2, 3, 4], top_k=3)
            return out.num_positions, teacher.check_health()

    assert await asyncio.to_thread(use_sync) == (4, True)


async def test_dns_target_balances_with_grpc_round_robin(fake_server) -> None:
    async with TeacherClient(f"dns:///localhost:{fake_server.port}", timeout_s=10) as teacher:
        assert (await teacher.score([1, 2, 3], top_k=2)).num_positions == 3
