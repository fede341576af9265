"""One step's rollouts and their teacher answers, with the teacher scoring one rollout
batch while the student generates the next.

Why this module exists: on a GPU the student's token-by-token generation and the
teacher's prefill run on different machines, so a step that samples everything and only
then asks the teacher leaves each side idle half the time. With
`rollout.overlap_scoring`, the step's sequences are generated `rollout.batch_size` at a
time; each batch's requests go to the teacher (one ScoreStream per batch, all in flight)
as soon as the batch is planned, and the next batch is generated meanwhile. Bounded: at
most one batch is scored while the next is generated; before sending batch n+1 the loop
collects batch n's answers.

Why resume stays exact: every batch is sampled with the step's current parameters (it
is the same step, nothing is sampled ahead across an optimiser step), under the seed of
its first sequence (`SamplingKey`), so the tokens are those of the non-overlapped path;
and checkpoints are written only between steps, when nothing is in flight. A resumed
run regenerates a whole step from the checkpoint, prefetched batches included.

Teacher outages: a batch whose answer failed with a transient error is scored again,
after generation, by `score_with_wait` (the trainer's long wait); other errors raise.

What it does not know: the loss, checkpoints, the wire format.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from opd_client.align import AlignmentPlan
from opd_client.train.config import RolloutConfig
from opd_client.train.pipeline import TeacherSession, is_transient, score_with_wait
from opd_client.train.rollout import RolloutBatch, SamplingKey, concat_rollouts, sample_rollouts
from opd_client.types import ScoreOutput

Planner = Callable[[RolloutBatch], tuple[list[AlignmentPlan], list[dict[str, Any]]]]
Answers = tuple[list[ScoreOutput], list[float]]


@dataclass
class ScoredRollouts:
    """A step's rollouts with the teacher's answer to each (in order) and the timings.

    generate_s: time spent generating; scoring_s: wall time of the teacher's answers, each
    batch from its send to its last answer; blocked_s: time the step waited for the
    teacher beyond generation (what overlap hides); waited_s: the long wait for a teacher
    that was gone (0 when it never was).
    """

    rollouts: RolloutBatch
    plans: list[AlignmentPlan]
    outputs: list[ScoreOutput]
    latencies_s: list[float]
    generate_s: float
    scoring_s: float
    blocked_s: float
    waited_s: float


@dataclass
class _Batch:
    rollouts: RolloutBatch
    plans: list[AlignmentPlan]
    requests: list[dict[str, Any]]
    answers: Answers | None = None


def rollout_and_score(
    model: Any,
    prompt_ids: Sequence[Sequence[int]],
    prompt_index: Sequence[int],
    cfg: RolloutConfig,
    stop_ids: Sequence[int],
    pad_id: int,
    k: int,
    key: SamplingKey,
    plan: Planner,
    session: TeacherSession,
    teacher_timeout_s: float,
) -> ScoredRollouts:
    """Samples the step's rollouts and gets every answer, overlapped when configured."""
    seqs = [list(p) for p in prompt_ids for _ in range(cfg.samples_per_prompt)]
    index = [i for i in prompt_index for _ in range(cfg.samples_per_prompt)]
    size = cfg.batch_size if cfg.overlap_scoring else max(len(seqs), 1)
    one_each = dataclasses.replace(cfg, samples_per_prompt=1)
    batches: list[_Batch] = []
    generate_s = scoring_s = blocked_s = 0.0
    pending: tuple[_Batch, float, concurrent.futures.Future[Answers]] | None = None

    def collect() -> None:
        nonlocal pending, scoring_s, blocked_s
        if pending is None:
            return
        batch, sent, future = pending
        pending = None
        t = time.perf_counter()
        try:
            batch.answers = future.result()
        except Exception as error:
            if not is_transient(error):
                raise
            # batch.answers stays None: scored again below, with the long wait.
        done = time.perf_counter()
        blocked_s += done - t
        scoring_s += done - sent

    for start in range(0, len(seqs), size):
        t = time.perf_counter()
        rollouts = sample_rollouts(
            model,
            seqs[start : start + size],
            index[start : start + size],
            one_each,
            stop_ids,
            pad_id,
            k,
            dataclasses.replace(key, first_sequence=key.first_sequence + start),
        )
        generate_s += time.perf_counter() - t
        batch = _Batch(rollouts, *plan(rollouts))
        batches.append(batch)
        collect()  # one batch ahead at most
        if cfg.overlap_scoring:
            pending = (batch, time.perf_counter(), session.submit_all(batch.requests))
    collect()
    waited_s = 0.0
    for batch in batches:
        if batch.answers is None:
            t = time.perf_counter()
            batch.answers, waited = score_with_wait(
                functools.partial(session.score_all, batch.requests), teacher_timeout_s
            )
            waited_s += waited
            blocked_s += time.perf_counter() - t
            scoring_s += time.perf_counter() - t
    return ScoredRollouts(
        concat_rollouts([b.rollouts for b in batches], pad_id),
        [p for b in batches for p in b.plans],
        [o for b in batches for o in b.answers[0]],  # type: ignore[index]
        [s for b in batches for s in b.answers[1]],  # type: ignore[index]
        generate_s,
        scoring_s,
        blocked_s,
        waited_s,
    )
