"""One step's rollouts and their teachers' answers, with the teachers scoring one rollout
batch while the student generates the next.

Why this module exists: on a GPU the student's token-by-token generation and the
teacher's prefill run on different machines, so a step that samples everything and only
then asks the teacher leaves each side idle half the time. With
`rollout.overlap_scoring`, the step's sequences are generated `rollout.batch_size` at a
time; each batch is split by teacher (every prompt is routed to one, `teachers.py`) and
each part goes to its teacher on its own ScoreStream, all requests in flight, while the
next batch is generated. Bounded: before sending batch n+1 the loop collects batch n's
answers, so at most one batch is being scored while the next is generated.

Why resume stays exact: every batch is sampled with the step's current parameters (it
is the same step, nothing is sampled ahead across an optimiser step), under the seed of
its first sequence (`SamplingKey`), so the tokens are those of the non-overlapped path;
and checkpoints are written only between steps, when nothing is in flight. A resumed
run regenerates a whole step from the checkpoint, prefetched batches included.

Teacher outages: a part whose answer failed with a transient error is scored again after
generation. With one teacher (or when no other teacher answered this step) that is the
trainer's long wait (`score_with_wait`, up to `teacher_unavailable_timeout_s`). When
another teacher did answer, a teacher that just stopped answering gets `requeue_after_s`
and one that was already down one more try; then its prompts are handed back to the loop
to be queued for a later step, and the step trains on the rest. A teacher down for
longer than `teacher_unavailable_timeout_s` ends the run (checkpoint, exit 3) all the same.

What it does not know: the loss, checkpoints, the wire format.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from opd_client.align import AlignmentPlan
from opd_client.train.config import RolloutConfig
from opd_client.train.pipeline import TeacherUnavailableError, is_transient, score_with_wait
from opd_client.train.rollout import (
    RolloutBatch,
    SamplingKey,
    concat_rollouts,
    sample_rollouts,
    take_rollouts,
)
from opd_client.train.teachers import TeacherLink
from opd_client.types import ScoreOutput

logger = logging.getLogger(__name__)
Answers = tuple[list[ScoreOutput], list[float]]


@dataclass
class TeacherOutages:
    """When each teacher that stopped answering did so (monotonic seconds), across steps."""

    since: dict[int, float] = field(default_factory=dict)


@dataclass
class ScoredRollouts:
    """A step's rollouts (those whose teacher answered) with each answer, in order.

    teacher_B: index of the teacher that scored each response. requeued: prompt indices
    (into the prompts file) whose teacher did not answer in time; the loop queues them
    again. generate_s: time spent generating; scoring_s: wall time of the teachers'
    answers, each part from its send to its last answer; blocked_s: time the step waited
    for teachers beyond generation (what overlap hides); waited_s: the long wait for a
    teacher that was gone (0 when none was).
    """

    rollouts: RolloutBatch
    plans: list[AlignmentPlan]
    outputs: list[ScoreOutput]
    latencies_s: list[float]
    teacher_B: list[int]
    requeued: list[int]
    generate_s: float
    scoring_s: float
    blocked_s: float
    waited_s: float


@dataclass
class _Part:
    """The sequences of one batch that one teacher scores."""

    teacher: int
    seqs: list[int]  # positions in the step's sequence list
    rollouts: RolloutBatch
    plans: list[AlignmentPlan]
    requests: list[dict[str, Any]]
    answers: Answers | None = None


class _Timer:
    def __init__(self) -> None:
        self.generate_s = self.scoring_s = self.blocked_s = self.waited_s = 0.0


def rollout_and_score(
    model: Any,
    prompt_ids: Sequence[Sequence[int]],
    prompt_index: Sequence[int],
    routes: Sequence[int],
    cfg: RolloutConfig,
    stop_ids: Sequence[int],
    pad_id: int,
    k: int,
    key: SamplingKey,
    links: Sequence[TeacherLink],
    teacher_timeout_s: float,
    requeue_after_s: float,
    outages: TeacherOutages,
) -> ScoredRollouts:
    """Samples the step's rollouts and gets every answer, overlapped when configured.

    `routes[i]` is the teacher of prompt i; `outages` carries over between steps."""
    spp = cfg.samples_per_prompt
    seqs = [list(p) for p in prompt_ids for _ in range(spp)]
    index = [i for i in prompt_index for _ in range(spp)]
    route = [t for t in routes for _ in range(spp)]
    size = cfg.batch_size if cfg.overlap_scoring else max(len(seqs), 1)
    one_each = dataclasses.replace(cfg, samples_per_prompt=1)
    timer = _Timer()
    parts: list[_Part] = []
    pending: list[tuple[_Part, float, concurrent.futures.Future[Answers]]] = []

    def collect() -> None:
        t = time.perf_counter()
        for part, sent, future in pending:
            try:
                part.answers = future.result()
            except Exception as error:
                if not is_transient(error):
                    raise
                # part.answers stays None: scored again below, or its prompts requeued.
            timer.scoring_s += time.perf_counter() - sent
        timer.blocked_s += time.perf_counter() - t
        pending.clear()

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
        timer.generate_s += time.perf_counter() - t
        batch_parts = []
        for teacher in sorted(set(route[start : start + size])):
            rows = [r for r in range(len(rollouts.response_ids)) if route[start + r] == teacher]
            sub = take_rollouts(rollouts, rows)
            batch_parts.append(
                _Part(teacher, [start + r for r in rows], sub, *links[teacher].plan(sub))
            )
        parts += batch_parts
        collect()  # one batch ahead at most
        if cfg.overlap_scoring:
            now = time.perf_counter()
            pending += [
                (p, now, links[p.teacher].session.submit_all(p.requests)) for p in batch_parts
            ]
    collect()
    _rescore(parts, links, teacher_timeout_s, requeue_after_s, outages, timer)
    return _gather(parts, index, spp, pad_id, timer)


def _rescore(
    parts: list[_Part],
    links: Sequence[TeacherLink],
    teacher_timeout_s: float,
    requeue_after_s: float,
    outages: TeacherOutages,
    timer: _Timer,
) -> None:
    """Scores the parts without an answer: long wait, or bounded wait then requeue."""
    for teacher in sorted({p.teacher for p in parts if p.answers is None}):
        others_answered = any(p.answers is not None and p.teacher != teacher for p in parts)
        down_since = outages.since.get(teacher)
        if others_answered and len(links) > 1:
            budget = requeue_after_s if down_since is None else 0.0
        else:
            gone = 0.0 if down_since is None else time.monotonic() - down_since
            budget = max(teacher_timeout_s - gone, 0.0)
        for part in (p for p in parts if p.teacher == teacher and p.answers is None):
            t = time.perf_counter()
            try:
                part.answers, waited = score_with_wait(
                    functools.partial(links[teacher].session.score_all, part.requests),
                    max(budget, 1e-3),
                )
                timer.waited_s += waited
            except TeacherUnavailableError:
                if not (others_answered and len(links) > 1):
                    raise
            finally:
                spent = time.perf_counter() - t
                timer.blocked_s += spent
                timer.scoring_s += spent
                budget = max(budget - spent, 0.0)
        failed = any(p.teacher == teacher and p.answers is None for p in parts)
        if not failed:
            if down_since is not None:
                logger.warning("teacher %s is back; its queued prompts follow", links[teacher].name)
            outages.since.pop(teacher, None)
            continue
        first = outages.since.setdefault(teacher, time.monotonic())
        if time.monotonic() - first >= teacher_timeout_s:
            raise TeacherUnavailableError(
                f"teacher {links[teacher].name} unavailable for {time.monotonic() - first:.0f} s "
                f"(teacher_unavailable_timeout_s={teacher_timeout_s:.0f})"
            )
        logger.warning(
            "teacher %s did not answer; its prompts go back in the queue (down %.0f s)",
            links[teacher].name,
            time.monotonic() - first,
        )


def _gather(
    parts: list[_Part], index: Sequence[int], spp: int, pad_id: int, timer: _Timer
) -> ScoredRollouts:
    """The answered sequences in step order; prompts with an unanswered sample requeued."""
    dropped_prompts = sorted({s // spp for p in parts if p.answers is None for s in p.seqs})
    dropped = set(dropped_prompts)
    by_seq: dict[int, tuple[_Part, int]] = {}
    for part in parts:
        for row, s in enumerate(part.seqs):
            if s // spp not in dropped:
                by_seq[s] = (part, row)
    kept = sorted(by_seq)
    pieces = [take_rollouts(by_seq[s][0].rollouts, [by_seq[s][1]]) for s in kept]
    answers = [by_seq[s][0].answers for s in kept]
    return ScoredRollouts(
        rollouts=concat_rollouts(pieces, pad_id) if pieces else _empty(parts, pad_id),
        plans=[by_seq[s][0].plans[by_seq[s][1]] for s in kept],
        outputs=[a[0][by_seq[s][1]] for a, s in zip(answers, kept, strict=True)],  # type: ignore[index]
        latencies_s=[a[1][by_seq[s][1]] for a, s in zip(answers, kept, strict=True)],  # type: ignore[index]
        teacher_B=[by_seq[s][0].teacher for s in kept],
        requeued=[index[p * spp] for p in dropped_prompts],
        generate_s=timer.generate_s,
        scoring_s=timer.scoring_s,
        blocked_s=timer.blocked_s,
        waited_s=timer.waited_s,
    )


def _empty(parts: list[_Part], pad_id: int) -> RolloutBatch:
    return take_rollouts(concat_rollouts([p.rollouts for p in parts], pad_id), [])
