"""The batcher in front of an engine with its own continuous batching (the vllm backend).

A fake engine that takes jobs concurrently and records how many were in flight: the
batcher hands jobs over one by one, never past `max_batch_sequences` jobs or
`max_inflight_tokens` tokens in flight, and in round-robin order over clients, so a
client with a long queue cannot starve another.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from fakes import FakeEngine, write_word_tokenizer

from opd_teacher.batcher import Batcher
from opd_teacher.config import BatcherConfig
from opd_teacher.metrics import ServiceMetrics
from opd_teacher.types import ScoreJob, ScoreResult


class ContinuousFake(FakeEngine):
    """Scores each call after a short sleep, so calls overlap as in vLLM."""

    handles_own_batching = True

    def __init__(self, tokenizer_dir: Path) -> None:
        super().__init__(tokenizer_dir)
        self.started: list[str] = []
        self.inflight_jobs = self.inflight_tokens = 0
        self.peak_jobs = self.peak_tokens = 0

    async def score(self, jobs: Sequence[ScoreJob]) -> list[ScoreResult]:
        assert len(jobs) == 1, "an engine with its own batching gets jobs one by one"
        (job,) = jobs
        self.started.append(job.job_id)
        self.inflight_jobs += 1
        self.inflight_tokens += job.num_tokens
        self.peak_jobs = max(self.peak_jobs, self.inflight_jobs)
        self.peak_tokens = max(self.peak_tokens, self.inflight_tokens)
        try:
            await asyncio.sleep(0.01)
            return await super().score(jobs)
        finally:
            self.inflight_jobs -= 1
            self.inflight_tokens -= job.num_tokens


def _job(job_id: str, length: int, client: str) -> ScoreJob:
    return ScoreJob(job_id, client, np.full(length, 3, dtype=np.int32), top_k=1)


async def _run(config: BatcherConfig, jobs: list[ScoreJob], tmp_path: Path) -> ContinuousFake:
    engine = ContinuousFake(write_word_tokenizer(tmp_path / "tok"))
    await engine.load()
    async with Batcher(engine, config, ServiceMetrics()) as batcher:
        results = await asyncio.gather(*(batcher.submit(job) for job in jobs))
        assert await batcher.drain(5)
    assert [r.topk_ids_PK.shape[0] for r in results] == [j.num_positions for j in jobs]
    return engine


async def test_in_flight_work_stays_within_the_limits(tmp_path: Path) -> None:
    jobs = [_job(f"j{i}", 10 + i % 7, "c") for i in range(40)]
    config = BatcherConfig(max_batch_sequences=4, max_inflight_tokens=50)
    engine = await _run(config, jobs, tmp_path)
    assert 1 < engine.peak_jobs <= 4, "jobs overlap, up to the cap"
    assert engine.peak_tokens <= 50
    assert sorted(engine.started) == sorted(job.job_id for job in jobs)


async def test_a_job_over_the_token_limit_still_runs_alone(tmp_path: Path) -> None:
    jobs = [_job("big", 80, "a"), _job("small", 5, "b")]
    engine = await _run(BatcherConfig(max_inflight_tokens=50), jobs, tmp_path)
    assert sorted(engine.started) == ["big", "small"] and engine.peak_tokens == 80


async def test_clients_take_turns(tmp_path: Path) -> None:
    greedy = [_job(f"g{i}", 8, "greedy") for i in range(20)]
    polite = [_job(f"p{i}", 8, "polite") for i in range(2)]
    engine = await _run(BatcherConfig(max_batch_sequences=2), greedy + polite, tmp_path)
    # Both polite jobs start within the first few hand-overs, not after the 20 greedy ones.
    assert max(engine.started.index(job.job_id) for job in polite) <= 5
