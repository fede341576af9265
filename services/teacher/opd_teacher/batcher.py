"""Groups jobs from many clients into engine batches, fairly and with bounded memory.

Between the transports and the engine sits one async queue per client. A batch is
filled round-robin over clients, one job per client per turn, so one client streaming
thousands of requests delays another's single request by at most one batch. Limits: a
token budget per batch (padded tokens), a sequence cap, a short wait window for more
jobs, a bound on queued jobs (past it, RESOURCE_EXHAUSTED at once), and deadlines
checked before a job runs. An engine with its own continuous batching (vllm,
`handles_own_batching`) gets jobs one by one, as soon as they arrive and in the same
round-robin order, while the work in flight stays within `max_batch_sequences` jobs and
`max_inflight_tokens` tokens; the rest wait here, where fair share and back-pressure hold.
It knows engines only through `ScoringEngine`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from dataclasses import dataclass, field

from opd_teacher.config import BatcherConfig
from opd_teacher.engine.base import ScoringEngine
from opd_teacher.errors import DeadlineExceededError, QueueFullError, UnavailableError
from opd_teacher.metrics import ServiceMetrics
from opd_teacher.types import ScoreJob, ScoreResult

logger = logging.getLogger(__name__)


@dataclass
class _Pending:
    job: ScoreJob
    future: asyncio.Future[ScoreResult]
    enqueued_at: float = field(default_factory=time.monotonic)


class Batcher:
    """Owns the engine's call loop; use as `async with Batcher(...) as batcher`."""

    def __init__(
        self, engine: ScoringEngine, config: BatcherConfig, metrics: ServiceMetrics
    ) -> None:
        self.engine = engine
        self.config = config
        self.metrics = metrics
        self._queues: collections.OrderedDict[str, collections.deque[_Pending]] = (
            collections.OrderedDict()
        )
        self._queued = 0
        self._running = 0
        self._running_tokens = 0
        self._inflight: set[asyncio.Task[None]] = set()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._accepting = True
        self._loop_task: asyncio.Task[None] | None = None
        self.engine_failed = asyncio.Event()
        """Set when the engine raised and then failed its health check: the process exits."""

    async def __aenter__(self) -> Batcher:
        self._loop_task = asyncio.create_task(self._run(), name="batcher")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def queued(self) -> int:
        return self._queued

    async def submit(self, job: ScoreJob) -> ScoreResult:
        """Queues `job` and waits for its result; cancelling the wait dequeues it."""
        if not self._accepting:
            raise UnavailableError("the teacher is draining; retry on another replica")
        if self._queued >= self.config.max_queue:
            raise QueueFullError(
                f"queue full: {self._queued} jobs waiting (max_queue {self.config.max_queue})"
            )
        pending = _Pending(job, asyncio.get_running_loop().create_future())
        self._queues.setdefault(job.client, collections.deque()).append(pending)
        self._set_queued(self._queued + 1)
        self._idle.clear()
        self._wakeup.set()
        try:
            return await pending.future
        except asyncio.CancelledError:
            self._remove(pending)
            raise

    def _remove(self, pending: _Pending) -> None:
        queue = self._queues.get(pending.job.client)
        if queue is not None and pending in queue:
            queue.remove(pending)
            self._set_queued(self._queued - 1)
            self._update_idle()

    def _set_queued(self, value: int) -> None:
        self._queued = value
        self.metrics.queue_depth.set(value)

    def _update_idle(self) -> None:
        if self._queued == 0 and self._running == 0:
            self._idle.set()

    async def drain(self, timeout_s: float) -> bool:
        """Stops admitting jobs and waits for queued and running ones; False on timeout."""
        self._accepting = False
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        self._accepting = False
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        for task in list(self._inflight):
            task.cancel()
        for cancelled in list(self._inflight):
            with contextlib.suppress(asyncio.CancelledError):
                await cancelled
        for queue in self._queues.values():
            for pending in queue:
                if not pending.future.done():
                    pending.future.set_exception(UnavailableError("the teacher shut down"))
        self._queues.clear()
        self._set_queued(0)

    async def _run(self) -> None:
        if self.engine.handles_own_batching:
            await self._run_continuous()
            return
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._queued == 0:
                continue
            if self.config.max_wait_ms > 0 and self._queued < self.config.max_batch_sequences:
                await asyncio.sleep(self.config.max_wait_ms / 1000)
            batch = self._take_batch()
            if batch:
                await self._run_batch(batch)
            if self._queued:
                self._wakeup.set()

    async def _run_continuous(self) -> None:
        """Hands each job to the engine as soon as the in-flight limits allow."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while (pending := self._take_one()) is not None:
                task = asyncio.create_task(self._run_batch([pending]), name="engine-job")
                self._inflight.add(task)
                task.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._wakeup.set()

    def _take_one(self) -> _Pending | None:
        """The head job of the client served longest ago, if it fits what is in flight.

        That head waits for room rather than being overtaken, so a stream of short jobs
        cannot starve a long one."""
        now = time.monotonic()
        taken: _Pending | None = None
        for client in list(self._queues):
            queue = self._queues[client]
            self._drop_stale(queue, now)
            if not queue:
                del self._queues[client]
                continue
            length = queue[0].job.num_tokens
            if self._running >= self.config.max_batch_sequences or (
                self._running_tokens
                and self._running_tokens + length > self.config.max_inflight_tokens
            ):
                break
            taken = queue.popleft()
            self._set_queued(self._queued - 1)
            self._queues.move_to_end(client)
            if not queue:
                del self._queues[client]
            # Counted at once, so the next call sees this job as in flight.
            self._running += 1
            self._running_tokens += length
            break
        self._update_idle()
        return taken

    def _take_batch(self) -> list[_Pending]:
        """Round-robin over clients, one job per client per pass, within the limits."""
        batch: list[_Pending] = []
        longest = real_tokens = 0
        now = time.monotonic()
        max_sequences = self.config.max_batch_sequences
        took_one = True
        while took_one and len(batch) < max_sequences:
            took_one = False
            for client in list(self._queues):
                if len(batch) >= max_sequences:
                    break
                queue = self._queues[client]
                self._drop_stale(queue, now)
                index = self._first_fitting(queue, batch, longest, real_tokens, now)
                if index is not None:
                    pending = queue[index]
                    del queue[index]
                    batch.append(pending)
                    self._set_queued(self._queued - 1)
                    longest = max(longest, pending.job.num_tokens)
                    real_tokens += pending.job.num_tokens
                    took_one = True
                    # Served clients move to the back: the next batch starts elsewhere.
                    self._queues.move_to_end(client)
                if not queue:
                    del self._queues[client]
        self._update_idle()
        return batch

    def _first_fitting(
        self,
        queue: collections.deque[_Pending],
        batch: list[_Pending],
        longest: int,
        real: int,
        now: float,
    ) -> int | None:
        """Index of the first of this client's next jobs that fits the batch's limits.

        The look-ahead (one batch's worth of jobs) is what lets length bucketing group
        similar lengths from one client's stream; answers may come out of order anyway.
        """
        if not batch:
            return 0 if queue else None  # a job over the budget on its own still runs, alone
        for index in range(min(len(queue), self.config.max_batch_sequences)):
            if queue[index].future.done() or _expired(queue[index].job, now):
                continue  # dropped when it reaches the head; never run
            length = queue[index].job.num_tokens
            padded = (len(batch) + 1) * max(longest, length)
            if (
                padded <= self.config.max_batch_tokens
                and 1 - (real + length) / padded <= self.config.max_padding_fraction
            ):
                return index
        return None

    def _drop_stale(self, queue: collections.deque[_Pending], now: float) -> None:
        """Pops the head jobs that were cancelled or whose deadline passed; they never run."""
        while queue and (queue[0].future.done() or _expired(queue[0].job, now)):
            stale = queue.popleft()
            self._set_queued(self._queued - 1)
            if not stale.future.done():
                self.metrics.expired_before_run.inc()
                stale.future.set_exception(
                    DeadlineExceededError("deadline passed while the job was queued")
                )

    async def _run_batch(self, batch: list[_Pending]) -> None:
        started = time.monotonic()
        for pending in batch:
            self.metrics.queue_wait.observe(started - pending.enqueued_at)
        self.metrics.batch_sequences.observe(len(batch))
        self.metrics.batch_tokens.observe(len(batch) * max(p.job.num_tokens for p in batch))
        tokens = sum(p.job.num_tokens for p in batch)
        if not self.engine.handles_own_batching:  # _take_one counts those when taking them
            self._running += len(batch)
            self._running_tokens += tokens
        try:
            results = await self.engine.score([p.job for p in batch])
        except Exception as error:
            logger.exception("engine failed on a batch of %d jobs", len(batch))
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            try:
                await self.engine.check_health()
            except Exception:
                logger.exception("engine failed its health check; the process will exit")
                self.engine_failed.set()
        else:
            for pending, result in zip(batch, results, strict=True):
                # A caller that gave up (cancelled, deadline) has a done future: drop it.
                if not pending.future.done():
                    pending.future.set_result(result)
        finally:
            self._running -= len(batch)
            self._running_tokens -= tokens
            self._update_idle()


def _expired(job: ScoreJob, now: float) -> bool:
    return job.deadline is not None and now >= job.deadline
