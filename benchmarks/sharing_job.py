"""One trainer job of benchmarks/sharing.py: the teacher-facing part of an opd-train step.

Why this module exists: sharing.py runs N of these at once, each in its own process (so
clients share no GIL), in two layouts, and the job must do the same work in both: score
one batch of rollout-shaped sequences per step, then a fixed amount of student-side work
standing in for rollout + backward. It is imported by the job processes (forked from a
server that preloads it), so it holds the job side only; sharing.py measures and reports.
What it does not know: other jobs, the table, the JSON report.

    shared:      TeacherClient -> one ScoreStream per step, every sequence in flight
                 (as opd-train's TeacherSession.score_all), under the job's own client name
    co-located:  the service's own HFEngine and Batcher (its default batching), in-process
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

TOP_K = 32
SEQS_PER_STEP = 8
PROMPT_TOKENS = (16, 32)  # inclusive ranges
RESPONSE_TOKENS = (32, 128)
MATMUL_SIZE = 256
MATMUL_GFLOP = 2 * MATMUL_SIZE**3 / 1e9

ScoreInput = tuple[np.ndarray, int]  # (token ids int32 [N], score_from)
Scorer = Callable[[list[ScoreInput]], Awaitable[list[tuple[float, int]]]]


@dataclass(frozen=True)
class JobSpec:
    """What one job process does; pickled to the child."""

    layout: str  # "shared" | "co-located"
    index: int
    model_dir: str
    vocab: int
    address: str  # shared: the teacher's host:port
    client_name: str
    steps: int
    student_matmuls: int
    threads: int


def step_batches(vocab: int, steps: int, job: int) -> list[list[ScoreInput]]:
    """SEQS_PER_STEP sequences for each of steps + 1 steps (the first is the warm-up).

    Lengths depend on the step only, so every job has the same work and max/min
    throughput measures the scheduling; the token ids depend on `job`."""
    lengths = np.random.default_rng(0)
    tokens = np.random.default_rng(1000 + job)
    batches = []
    for _ in range(steps + 1):
        batch = []
        for _ in range(SEQS_PER_STEP):
            prompt = int(lengths.integers(PROMPT_TOKENS[0], PROMPT_TOKENS[1] + 1))
            response = int(lengths.integers(RESPONSE_TOKENS[0], RESPONSE_TOKENS[1] + 1))
            ids_N = tokens.integers(0, vocab, size=prompt + response).astype(np.int32)
            batch.append((ids_N, prompt - 1))  # row prompt-1 predicts the first response token
        batches.append(batch)
    return batches


def proc_memory(pid: int | str = "self") -> dict[str, int]:
    """VmRSS, VmHWM and Pss (shared pages split between the processes using them), bytes."""
    values = {}
    for name, fields in (
        (f"/proc/{pid}/status", ("VmRSS", "VmHWM")),
        (f"/proc/{pid}/smaps_rollup", ("Pss",)),
    ):
        with open(name) as handle:
            for line in handle:
                if line.split(":", 1)[0] in fields:
                    values[line.split(":", 1)[0]] = int(line.split()[1]) * 1024
    return {"rss": values["VmRSS"], "hwm": values["VmHWM"], "pss": values["Pss"]}


@contextlib.asynccontextmanager
async def shared_scorer(spec: JobSpec) -> AsyncIterator[Scorer]:
    from opd_client import TeacherClient

    async with TeacherClient(spec.address, timeout_s=600, client_name=spec.client_name) as client:

        async def score(batch: list[ScoreInput]) -> list[tuple[float, int]]:
            async with client.stream(top_k=TOP_K) as stream:
                futures = [await stream.submit(ids, score_from=start) for ids, start in batch]
                answered = []
                for answer in asyncio.as_completed(futures):
                    positions = (await answer).num_positions
                    answered.append((time.monotonic(), positions))
                return answered

        yield score


@contextlib.asynccontextmanager
async def colocated_scorer(spec: JobSpec) -> AsyncIterator[Scorer]:
    from opd_teacher.batcher import Batcher
    from opd_teacher.config import BatcherConfig, HFEngineConfig
    from opd_teacher.engine.hf import HFEngine
    from opd_teacher.metrics import ServiceMetrics
    from opd_teacher.types import ScoreJob

    engine = HFEngine(HFEngineConfig(model_dir=Path(spec.model_dir)))
    await engine.load()
    job_ids = itertools.count()
    try:
        async with Batcher(engine, BatcherConfig(), ServiceMetrics()) as batcher:

            async def one(ids_N: np.ndarray, start: int) -> tuple[float, int]:
                job = ScoreJob(f"{next(job_ids)}", spec.client_name, ids_N, TOP_K, start)
                result = await batcher.submit(job)
                return time.monotonic(), len(result.topk_ids_PK)

            async def score(batch: list[ScoreInput]) -> list[tuple[float, int]]:
                return list(await asyncio.gather(*(one(ids, start) for ids, start in batch)))

            yield score
    finally:
        await engine.shutdown()


async def run_job(spec: JobSpec, conn: Connection) -> dict[str, Any]:
    """Warm up on one sequence, say 'ready', wait for the deadline (the release), then
    run the timed steps. Times are time.monotonic() seconds, comparable across processes."""
    import torch

    a_DD, b_DD = torch.randn(MATMUL_SIZE, MATMUL_SIZE), torch.randn(MATMUL_SIZE, MATMUL_SIZE)

    def student_work() -> float:
        started = time.process_time()
        for _ in range(spec.student_matmuls):
            torch.mm(a_DD, b_DD)
        return time.process_time() - started

    batches = step_batches(spec.vocab, spec.steps, spec.index)
    scorer = shared_scorer if spec.layout == "shared" else colocated_scorer
    async with scorer(spec) as score:
        await score(batches[0][:1])  # connects the stream / allocates
        student_work()
        conn.send(("ready", None))
        deadline = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        cpu_started = time.process_time()
        steps: list[tuple[float, float, float, int]] = []  # start, scored, end, positions
        answers: list[tuple[float, int]] = []  # per sequence: answered at, positions
        student_cpu_s = 0.0
        for batch in batches[1:]:
            if steps and time.monotonic() >= deadline:
                break
            start = time.monotonic()
            answered = await score(batch)
            scored = time.monotonic()
            student_cpu_s += student_work()
            steps.append((start, scored, time.monotonic(), sum(p for _, p in answered)))
            answers += answered
        return {
            "steps": steps,
            "answers": answers,
            "cpu_s": time.process_time() - cpu_started,
            "student_cpu_s": student_cpu_s,
            "memory": proc_memory(),  # with the teacher (co-located) still loaded
        }


def job_main(spec: JobSpec, conn: Connection) -> None:
    """Entry point of a job process; every outcome, errors too, goes back over `conn`."""
    try:
        import torch

        torch.set_num_threads(spec.threads)
        conn.send(("done", asyncio.run(run_job(spec, conn))))
    except BaseException:
        with contextlib.suppress(OSError):  # the parent may be gone already
            conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()
