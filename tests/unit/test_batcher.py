"""The batcher alone (no gRPC): token budget, sequence cap, length bucketing, fairness."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeEngine, write_word_tokenizer

from opd_teacher.batcher import Batcher
from opd_teacher.config import BatcherConfig, ConfigError
from opd_teacher.metrics import ServiceMetrics
from opd_teacher.types import ScoreJob


def _job(job_id: str, length: int, client: str = "c") -> ScoreJob:
    return ScoreJob(job_id, client, np.full(length, 3, dtype=np.int32), top_k=1)


async def _run(config: BatcherConfig, jobs: list[ScoreJob], tmp_path: Path) -> FakeEngine:
    engine = FakeEngine(write_word_tokenizer(tmp_path / "tok"))
    await engine.load()
    async with Batcher(engine, config, ServiceMetrics()) as batcher:
        results = await asyncio.gather(*(batcher.submit(job) for job in jobs))
    assert [r.topk_ids_PK.shape[0] for r in results] == [j.num_positions for j in jobs]
    return engine


async def test_token_budget_and_sequence_cap_hold(tmp_path: Path) -> None:
    lengths = [5, 9, 3, 12, 7, 7, 2, 11, 4, 8]
    jobs = [_job(f"j{i}", n) for i, n in enumerate(lengths)]
    config = BatcherConfig(max_batch_tokens=24, max_batch_sequences=3, max_wait_ms=5)
    engine = await _run(config, jobs, tmp_path)
    by_id = {job.job_id: job.num_tokens for job in jobs}
    for batch in engine.batches:
        assert len(batch) <= 3
        assert len(batch) * max(by_id[j] for j in batch) <= 24
    assert sorted(j for b in engine.batches for j in b) == sorted(by_id)


async def test_a_job_over_the_budget_runs_alone(tmp_path: Path) -> None:
    jobs = [_job("big", 50), _job("small", 2)]
    engine = await _run(BatcherConfig(max_batch_tokens=16, max_wait_ms=5), jobs, tmp_path)
    assert ["big"] in engine.batches


async def test_length_bucketing_limits_padding(tmp_path: Path) -> None:
    lengths = [4, 40, 4, 40, 4, 40, 4, 40]
    jobs = [_job(f"j{i}", n) for i, n in enumerate(lengths)]
    config = BatcherConfig(max_batch_tokens=1000, max_padding_fraction=0.0, max_wait_ms=5)
    engine = await _run(config, jobs, tmp_path)
    by_id = {job.job_id: job.num_tokens for job in jobs}
    for batch in engine.batches:
        assert len({by_id[j] for j in batch}) == 1, f"mixed lengths in {batch}"
    assert max(len(b) for b in engine.batches) > 1


async def test_round_robin_between_clients(tmp_path: Path) -> None:
    jobs = [_job(f"a{i}", 3, "a") for i in range(6)] + [_job("b0", 3, "b")]
    config = BatcherConfig(max_batch_sequences=2, max_wait_ms=20)
    engine = await _run(config, jobs, tmp_path)
    first_with_b = next(i for i, batch in enumerate(engine.batches) if "b0" in batch)
    assert first_with_b == 0, engine.batches


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="max_padding_fraction"):
        BatcherConfig(max_padding_fraction=1.5)
    with pytest.raises(ConfigError, match="max_batch_tokens"):
        BatcherConfig(max_batch_tokens=0)
