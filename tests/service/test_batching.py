"""Batching through the service: coalescing, fairness between clients, deadlines."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from fakes import FakeEngine

from opd_client import RetryPolicy, TeacherClient
from opd_teacher.config import BatcherConfig


async def test_concurrent_requests_coalesce_into_batches(start_server, word_tokenizer_dir) -> None:
    engine = FakeEngine(word_tokenizer_dir, delay_s=0.02)
    server = await start_server(engine, batcher=BatcherConfig(max_wait_ms=5))
    async with TeacherClient(f"127.0.0.1:{server.port}", timeout_s=10) as teacher:
        await asyncio.gather(*(teacher.score([1, 2, 3, i + 2], top_k=2) for i in range(32)))
    histogram = server.metrics.registry
    count = histogram.get_sample_value("opd_teacher_batch_sequences_count")
    total = histogram.get_sample_value("opd_teacher_batch_sequences_sum")
    assert total == 32
    assert count is not None and count < 32, "some batches must hold more than one sequence"
    assert max(len(b) for b in engine.batches) > 1


async def test_a_second_clients_request_is_not_starved_by_a_flood(
    start_server, word_tokenizer_dir
) -> None:
    engine = FakeEngine(word_tokenizer_dir)
    server = await start_server(
        engine,
        batcher=BatcherConfig(max_batch_sequences=8, max_wait_ms=1),
        max_stream_inflight=1000,
    )
    target = f"127.0.0.1:{server.port}"
    async with (
        TeacherClient(target, timeout_s=60, client_name="flood") as flood,
        TeacherClient(target, timeout_s=60, client_name="single") as single,
    ):
        engine.score_gate.clear()  # the first batch blocks, so the flood stays queued
        async with flood.stream(top_k=2) as stream:
            flood_futures = [
                await stream.submit([1, 2, 2 + i % 60], request_id=f"f{i}") for i in range(1000)
            ]
            # Every flood request has arrived: queued, or in the batch held by the gate.
            while server.batcher.queued + sum(map(len, engine.batches)) < 1000:
                await asyncio.sleep(0.005)
            queued_flood = server.batcher.queued
            single_call = asyncio.create_task(single.score([5, 6, 7], top_k=2))
            while server.batcher.queued == queued_flood:
                await asyncio.sleep(0.005)
            engine.score_gate.set()
            await single_call
            batch_of_single = next(
                i for i, b in enumerate(engine.batches) if any(not job.startswith("f") for job in b)
            )
            await asyncio.gather(*flood_futures)
    assert queued_flood >= 992
    # Batch 0 was already running when the single request arrived; it rides batch 1.
    assert batch_of_single == 1, f"single client waited {batch_of_single} batches"
    assert len(engine.batches) >= 1000 // 8


async def test_a_queued_job_whose_deadline_passed_never_runs(
    start_server, word_tokenizer_dir
) -> None:
    engine = FakeEngine(word_tokenizer_dir, delay_s=0.5)
    server = await start_server(engine, batcher=BatcherConfig(max_batch_sequences=1))
    target = f"127.0.0.1:{server.port}"
    async with (
        TeacherClient(target, timeout_s=5) as slow,
        TeacherClient(target, timeout_s=0.2, retry=RetryPolicy(max_attempts=1)) as hasty,
    ):
        blocker = asyncio.create_task(slow.score([1, 2], top_k=1))
        await asyncio.sleep(0.05)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await hasty.score([3, 4], top_k=1)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await blocker
        await asyncio.sleep(0.1)
    ran = [job for batch in engine.batches for job in batch]
    assert len(ran) == 1, f"only the blocker may run, ran: {ran}"
    assert server.batcher.queued == 0
