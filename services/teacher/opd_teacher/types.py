"""Domain types between the transports, the batcher and the engines.

They hold validated token ids and numpy arrays only: no protobuf, no torch, so engines
and the batcher can be tested without either side of the wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ScoreJob:
    """One validated sequence to score.

    Row p of the result (p = 0 .. N-1-score_from) is the teacher's distribution over the
    token that follows the first score_from+p+1 tokens of `token_ids_N`.
    """

    job_id: str
    client: str
    token_ids_N: np.ndarray  # int32 [N], every id < vocab_size
    top_k: int  # 1..max_top_k
    score_from: int = 0  # 0..N-1
    return_token_logprobs: bool = False
    extra_ids_NE: np.ndarray | None = None  # int32 [N, E]
    deadline: float | None = None  # time.monotonic() after which the job must not run

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids_N.shape[0])

    @property
    def num_positions(self) -> int:
        return self.num_tokens - self.score_from


@dataclass
class ScoreResult:
    """The teacher's answer for one job; every array has P = N - score_from rows."""

    topk_ids_PK: np.ndarray  # int32 [P, K]
    topk_logprobs_PK: np.ndarray  # float32 [P, K], rows sorted descending
    token_logprobs_P: np.ndarray | None = None  # float32 [P]; last row NaN
    token_ranks_P: np.ndarray | None = None  # int32 [P]; 1 = top choice; last row 0
    extra_logprobs_PE: np.ndarray | None = None  # float32 [P, E]


@dataclass(frozen=True)
class SpecialTokenInfo:
    role: str
    id: int
    text: str


@dataclass(frozen=True)
class EngineInfo:
    """What an engine knows about its model, for GetInfo and for validation limits."""

    model: str
    fingerprint: str
    backend: str
    backend_version: str
    vocab_size: int
    max_sequence_length: int
    supports_extra_ids: bool
    special_tokens: tuple[SpecialTokenInfo, ...] = field(default_factory=tuple)
