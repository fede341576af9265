"""Turns one vLLM request's log-probs into the contract's packed top-K arrays.

A scored sequence is one vLLM request with `max_tokens=1`, `prompt_logprobs=K` and
`logprobs=K`. vLLM returns, for prompt positions 1..N-1, the log-probs of the token at that
position given the tokens before it, and for the one generated token the distribution
after all N tokens; row p of our answer (the distribution after the first p+1 tokens) is
therefore prompt position p+1 for p < N-1 and the generated token's entry for p = N-1.

Each vLLM position holds K+1 entries: first the actual token (the prompt token, or the
sampled one) with its vocabulary rank, then the top-K in rank order (the actual token
appears twice when it is in the top-K). With `flat_logprobs=True` vLLM keeps them as flat
Python lists (`vllm.logprobs.FlatLogprobs`), which become [N, K+1] numpy arrays in a few C
loops (`rows_from_flat`, the hot path); the default list of `{id: Logprob}` dicts costs one
dict and K+1 objects per position (`rows_from_dicts`, kept as the reference and for
`benchmarks/teacher.py`). This module never imports vLLM: it reads those containers by
duck typing, so it is tested in the main environment with plain fakes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from opd_teacher.types import ScoreJob, ScoreResult


class FlatLike(Protocol):
    """What `vllm.logprobs.FlatLogprobs` offers: per-position [start, end) into flat lists."""

    start_indices: list[int]
    end_indices: list[int]
    token_ids: list[int]
    logprobs: list[float]
    ranks: list[int | None]


class LogprobLike(Protocol):
    logprob: float
    rank: int | None


@dataclass
class Rows:
    """vLLM's K+1 entries per row as arrays; row p = distribution after p+1 tokens.

    Column 0 is the actual next token (for the last row: the token vLLM sampled, which
    the contract does not report); columns 1..K the top-K, sorted descending.
    """

    ids_NJ: np.ndarray  # int32 [N, K+1]
    logprobs_NJ: np.ndarray  # float32 [N, K+1]
    ranks_N: np.ndarray  # int32 [N], rank of column 0


def rows_from_flat(prompt: FlatLike, sample: FlatLike, num_tokens: int, top_k: int) -> Rows:
    """The hot path: FlatLogprobs of the prompt (N positions, the first empty) and of the
    one generated token, reshaped without building a Python object per entry."""
    width = top_k + 1
    if len(prompt.start_indices) != num_tokens:
        returned = len(prompt.start_indices)
        raise ValueError(f"vLLM returned {returned} prompt positions, not {num_tokens}")
    first = prompt.start_indices[1] if num_tokens > 1 else 0
    end = sample.start_indices[0] + width
    prompt_count = (num_tokens - 1) * width
    if len(prompt.token_ids) - first != prompt_count or len(sample.token_ids) < end:
        raise ValueError(f"vLLM returned other than {width} log-probs per position")
    ids_NJ = np.empty((num_tokens, width), dtype=np.int32)
    logprobs_NJ = np.empty((num_tokens, width), dtype=np.float32)
    ranks_N = np.empty(num_tokens, dtype=np.int32)
    start = sample.start_indices[0]
    ids_NJ[:-1] = np.asarray(prompt.token_ids[first:], dtype=np.int32).reshape(-1, width)
    ids_NJ[-1] = sample.token_ids[start:end]
    logprobs_NJ[:-1] = np.asarray(prompt.logprobs[first:], dtype=np.float32).reshape(-1, width)
    logprobs_NJ[-1] = sample.logprobs[start:end]
    ranks_N[:-1] = np.asarray(prompt.ranks[first::width], dtype=np.int32)
    ranks_N[-1] = sample.ranks[start] or 0
    return Rows(ids_NJ, logprobs_NJ, ranks_N)


def rows_from_dicts(
    prompt: Sequence[Mapping[int, LogprobLike] | None],
    sample: Sequence[Mapping[int, LogprobLike]],
    token_ids_N: np.ndarray,
    top_k: int,
) -> Rows:
    """The same rows from vLLM's default `list[dict[int, Logprob]]` containers.

    A dict holds K entries when the actual token is in the top-K and K+1 otherwise, so the
    top-K are the K best by log-prob and the actual token is looked up by id."""
    num_tokens = int(token_ids_N.shape[0])
    positions: list[tuple[Mapping[int, LogprobLike], int | None]] = [
        (entry, int(token_ids_N[p + 1])) for p, entry in enumerate(prompt[1:]) if entry is not None
    ]
    if len(positions) != num_tokens - 1:
        raise ValueError(f"vLLM returned {len(positions) + 1} prompt positions, not {num_tokens}")
    positions.append((sample[0], None))
    ids_NJ = np.zeros((num_tokens, top_k + 1), dtype=np.int32)
    logprobs_NJ = np.zeros((num_tokens, top_k + 1), dtype=np.float32)
    ranks_N = np.zeros(num_tokens, dtype=np.int32)
    for row, (entry, actual) in enumerate(positions):
        best = sorted(entry.items(), key=lambda item: -item[1].logprob)[:top_k]
        ids_NJ[row, 1:] = [token for token, _ in best]
        logprobs_NJ[row, 1:] = [value.logprob for _, value in best]
        if actual is not None:
            ids_NJ[row, 0] = actual
            logprobs_NJ[row, 0] = entry[actual].logprob
            ranks_N[row] = entry[actual].rank or 0
    return Rows(ids_NJ, logprobs_NJ, ranks_N)


def result_from_rows(rows: Rows, job: ScoreJob) -> ScoreResult:
    """The job's answer: rows score_from..N-1, top-K columns, token log-probs if asked."""
    start = job.score_from
    result = ScoreResult(
        topk_ids_PK=np.ascontiguousarray(rows.ids_NJ[start:, 1:]),
        topk_logprobs_PK=np.ascontiguousarray(rows.logprobs_NJ[start:, 1:]),
    )
    if job.return_token_logprobs:
        # Row p scores input token p+1; the last row has no next token (NaN, rank 0).
        token_logprobs_P = rows.logprobs_NJ[start:, 0].copy()
        token_ranks_P = rows.ranks_N[start:].copy()
        token_logprobs_P[-1] = np.nan
        token_ranks_P[-1] = 0
        result.token_logprobs_P = token_logprobs_P
        result.token_ranks_P = token_ranks_P
    return result
