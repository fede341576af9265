"""Rollouts to a `SupportBatch`: the tokenizer bridge and the teacher, over one stream.

Why this module exists: between sampling and the step, every response is planned by the
bridge (`bridge.plan` gives the teacher ids and the row each student position reads),
sent as teacher token ids with `score_from` on ONE `ScoreStream` with all requests in
flight, mapped back into the student vocabulary (`bridge.support`) and collated into the
loss library's `SupportBatch` (DESIGN.md §2). It also owns the trainer's long wait for a
teacher that is gone: the SDK retries one call; `score_with_wait` retries the whole batch
on a fresh stream with back-off until `teacher_unavailable_timeout_s`, then raises
`TeacherUnavailableError`.

`TeacherSession` runs the async `TeacherClient` on an event loop in a background thread,
so the (synchronous) torch loop calls it like a function.

What it does not know: models, optimisers, checkpoints. Overlapping the scoring of one
rollout batch with the generation of the next is `overlap.py`'s.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import torch
from torch import Tensor

from opd_client.align import AlignmentPlan, AlignStats, TokenizerBridge, collate
from opd_client.losses import SupportBatch
from opd_client.teacher import TeacherClient
from opd_client.train.rollout import PromptRecord, RolloutBatch
from opd_client.types import ScoreOutput

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Codes after which the teacher may come back: wait for it. Others are bugs: raise.
_WAIT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
    }
)


class TeacherUnavailableError(RuntimeError):
    """The teacher stayed unreachable for longer than teacher_unavailable_timeout_s."""


class TeacherSession:
    """`with TeacherSession(addresses, ...) as teacher:` a blocking face of TeacherClient."""

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        timeout_s: float,
        auth_token: str | None,
        client_name: str = "opd-train",
    ):
        self.addresses = tuple(addresses)
        self._client = TeacherClient(
            list(addresses), timeout_s=timeout_s, auth_token=auth_token, client_name=client_name
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> TeacherSession:
        self._thread.start()
        self.run(self._client.__aenter__())
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.run(self._client.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def get_info(self) -> Any:
        return self.run(self._client.get_info())

    def save_tokenizer(self, directory: Path) -> Path:
        return self.run(self._client.save_tokenizer(directory))

    def score_all(
        self, requests: Sequence[dict[str, Any]]
    ) -> tuple[list[ScoreOutput], list[float]]:
        """All requests on one stream, all in flight; answers in request order, and the
        latency of each in seconds."""
        return self.submit_all(requests).result()

    def submit_all(
        self, requests: Sequence[dict[str, Any]]
    ) -> concurrent.futures.Future[tuple[list[ScoreOutput], list[float]]]:
        """`score_all` without waiting: the future holds its answer (or its error)."""

        async def timed(
            started: float, future: asyncio.Future[ScoreOutput]
        ) -> tuple[ScoreOutput, float]:
            output = await future
            return output, asyncio.get_running_loop().time() - started

        async def go() -> tuple[list[ScoreOutput], list[float]]:
            loop = asyncio.get_running_loop()
            async with self._client.stream() as stream:
                sent = []
                try:
                    for request in requests:
                        ids = request["token_ids"]
                        options = {k: v for k, v in request.items() if k != "token_ids"}
                        sent.append(timed(loop.time(), await stream.submit(ids, **options)))
                finally:
                    # Every answer is collected, errors too, so none is left unread.
                    answers = await asyncio.gather(*sent, return_exceptions=True)
                done: list[tuple[ScoreOutput, float]] = []
                for answer in answers:
                    if isinstance(answer, BaseException):
                        raise answer
                    done.append(answer)
                return [output for output, _ in done], [latency for _, latency in done]

        return asyncio.run_coroutine_threadsafe(go(), self._loop)


def is_transient(error: BaseException) -> bool:
    if isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        return error.code() in _WAIT_CODES
    return isinstance(error, RuntimeError | asyncio.CancelledError | ConnectionError)


def score_with_wait(
    score: Callable[[], T],
    timeout_s: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[T, float]:
    """`score()`, retried while the teacher is unavailable; (result, seconds waited).

    Back-off doubles from 1 s to 30 s. Raises TeacherUnavailableError once the teacher has
    been unavailable for `timeout_s` in a row; other errors propagate at once.
    """
    first_failure: float | None = None
    backoff = 1.0
    while True:
        try:
            result = score()
            waited = 0.0 if first_failure is None else clock() - first_failure
            if first_failure is not None:
                logger.warning("teacher is back after %.0f s; carrying on", waited)
            return result, waited
        except Exception as error:
            if not is_transient(error):
                raise
            now = clock()
            first_failure = now if first_failure is None else first_failure
            gone = now - first_failure
            if gone >= timeout_s:
                raise TeacherUnavailableError(
                    f"teacher unavailable for {gone:.0f} s (teacher_unavailable_timeout_s="
                    f"{timeout_s:.0f}): {_describe(error)}"
                ) from None
            wait = min(backoff, timeout_s - gone)
            logger.warning(
                "teacher unavailable (%s); waiting %.0f s (%.0f s of %.0f s)",
                _describe(error),
                wait,
                gone,
                timeout_s,
            )
            sleep(wait)
            backoff = min(backoff * 2, 30.0)


def _describe(error: BaseException) -> str:
    if isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        return f"{error.code().name}: {error.details()}"  # type: ignore[attr-defined]
    return f"{type(error).__name__}: {error}"


@dataclass
class ScoredBatch:
    """The teacher's view of a RolloutBatch, in student positions [B, T].

    support: the teacher top-K support (after masking), as the loss library takes it.
    teacher_token_logprobs_BT: log q(y_t | c_t) where one teacher token is exactly y_t
        (NaN elsewhere); token_mask_BT: where it is valid and the position is kept.
    extra_logprobs_BTK: the teacher's log-probs at the student's top-K (student_topk
        support only), NaN where not scored.
    """

    support: SupportBatch
    teacher_token_logprobs_BT: Tensor
    token_mask_BT: Tensor
    extra_logprobs_BTK: Tensor | None
    plans: list[AlignmentPlan]
    stats: AlignStats
    latencies_s: list[float]
    teacher_tokens: int
    row_stats: list[AlignStats] = dataclasses.field(default_factory=list)


def plan_requests(
    bridge: TokenizerBridge,
    records: Sequence[PromptRecord],
    rollouts: RolloutBatch,
    top_k: int,
    want_token_logprobs: bool,
    student_topk_extra: bool,
    teacher_vocab: int,
) -> tuple[list[AlignmentPlan], list[dict[str, Any]]]:
    """One bridge plan and one ScoreRequest (as keyword arguments) per response."""
    plans, requests = [], []
    for b, resp in enumerate(rollouts.response_ids):
        plan = bridge.plan(records[rollouts.prompt_index[b]].prompt, resp)
        request: dict[str, Any] = {
            "token_ids": plan.teacher_ids_N,
            "score_from": plan.score_from,
            "top_k": top_k,
            "return_token_logprobs": want_token_logprobs,
        }
        if student_topk_extra:  # identity bridge only: student ids are teacher ids
            n, k = len(plan.teacher_ids_N), rollouts.student_topk_ids_BTK.shape[-1]
            extra_NE = np.zeros((n, k), dtype=np.int64)
            ids_TK = rollouts.student_topk_ids_BTK[b, : len(resp)].numpy()
            rows = plan.row_T[: len(resp)]
            extra_NE[rows] = np.where(ids_TK < teacher_vocab, ids_TK, 0)
            request["extra_ids_NE"] = extra_NE
        plans.append(plan)
        requests.append(request)
    return plans, requests


def assemble(
    bridges: Sequence[TokenizerBridge],
    plans: Sequence[AlignmentPlan],
    outputs: Sequence[ScoreOutput],
    rollouts: RolloutBatch,
    latencies_s: list[float],
    teacher_vocabs: Sequence[int],
) -> ScoredBatch:
    """Teacher answers → SupportBatch and the sampled-token log-probs, padded to T.

    `bridges` and `teacher_vocabs` hold one entry per response: the bridge and vocabulary
    size of the teacher that scored it (several teachers may share a batch)."""
    T = rollouts.response_ids_BT.shape[1]
    supports = []
    B = len(plans)
    token_lp_BT = torch.full((B, T), float("nan"))
    extra_BTK: Tensor | None = None
    if outputs and outputs[0].extra_logprobs_PE is not None:
        extra_BTK = torch.full((B, T, rollouts.student_topk_ids_BTK.shape[-1]), float("nan"))
    for b, (plan, out, bridge, teacher_vocab) in enumerate(
        zip(plans, outputs, bridges, teacher_vocabs, strict=True)
    ):
        support = bridge.support(plan, out.topk_ids_PK, out.topk_logprobs_PK, plan.score_from)
        supports.append(support)
        n_t = len(plan.row_T)
        if out.token_logprobs_P is not None:
            j_T = plan.teacher_token_T
            row_T = j_T - 1 - plan.score_from
            ok_T = (j_T >= 1) & (plan.row_T == j_T - 1) & (row_T >= 0)
            ok_T &= row_T < len(out.token_logprobs_P)
            values = np.full(n_t, np.nan, dtype=np.float32)
            values[ok_T] = out.token_logprobs_P[row_T[ok_T]]
            token_lp_BT[b, :n_t] = torch.from_numpy(values)
        if extra_BTK is not None and out.extra_logprobs_PE is not None:
            idx_T = plan.row_T - plan.score_from
            ok = (plan.row_T >= 0) & (idx_T >= 0) & (idx_T < len(out.extra_logprobs_PE))
            vals = np.full((n_t, extra_BTK.shape[-1]), np.nan, dtype=np.float32)
            vals[ok] = out.extra_logprobs_PE[idx_T[ok]]
            ids_TK = rollouts.student_topk_ids_BTK[b, :n_t].numpy()
            vals[ids_TK >= teacher_vocab] = np.nan
            extra_BTK[b, :n_t] = torch.from_numpy(vals)
    fields = collate(supports, pad_T=T)
    support_batch = SupportBatch(**fields)
    token_mask_BT = support_batch.mask_BT & ~torch.isnan(token_lp_BT)
    return ScoredBatch(
        support=support_batch,
        teacher_token_logprobs_BT=token_lp_BT,
        token_mask_BT=token_mask_BT,
        extra_logprobs_BTK=extra_BTK,
        plans=list(plans),
        stats=AlignStats.total(s.stats for s in supports),
        row_stats=[s.stats for s in supports],
        latencies_s=latencies_s,
        teacher_tokens=sum(len(p.teacher_ids_N) for p in plans),
    )
