"""What a teacher answers, as numpy arrays, and how requests are built.

Each packed field of a `ScoreResponse` is decoded with one `numpy.frombuffer`
(no Python lists on the hot path). This module knows the contract, not the transport.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from opd.teacher.v1 import teacher_pb2
from opd_protos import unpack_array


@dataclass(frozen=True)
class ScoreOutput:
    """The teacher's view of one sequence; every [P, ...] array has P = N - score_from rows.

    Row p is the distribution over the token after the first score_from+p+1 tokens.
    """

    request_id: str
    topk_ids_PK: np.ndarray  # int32 [P, K]
    topk_logprobs_PK: np.ndarray  # float32 or float16 [P, K], rows sorted descending
    token_logprobs_P: np.ndarray | None = None  # float32 [P]; last row NaN
    token_ranks_P: np.ndarray | None = None  # int32 [P]; 1 = top choice; last row 0
    token_ids_N: np.ndarray | None = None  # int32 [N], for text input
    offsets_N2: np.ndarray | None = None  # int32 [N, 2] character spans, for text input
    extra_logprobs_PE: np.ndarray | None = None  # float32 [P, E]

    @property
    def num_positions(self) -> int:
        return int(self.topk_ids_PK.shape[0])


def decode_response(response: teacher_pb2.ScoreResponse) -> ScoreOutput:
    rows, k = int(response.num_positions), int(response.k)
    logprob_dtype = np.float16 if response.logprobs_dtype == teacher_pb2.FLOAT16 else np.float32
    token_logprobs = token_ranks = token_ids = offsets = extra = None
    if response.token_logprobs:
        token_logprobs = unpack_array(response.token_logprobs, np.float32, (rows,))
        token_ranks = unpack_array(response.token_ranks, np.int32, (rows,))
    if response.token_ids:
        num_tokens = len(response.token_ids) // 4
        token_ids = unpack_array(response.token_ids, np.int32, (num_tokens,))
        offsets = unpack_array(response.offsets, np.int32, (num_tokens, 2))
    if response.extra_logprobs:
        per_position = len(response.extra_logprobs) // 4 // max(rows, 1)
        extra = unpack_array(response.extra_logprobs, np.float32, (rows, per_position))
    return ScoreOutput(
        request_id=response.request_id,
        topk_ids_PK=unpack_array(response.topk_ids, np.int32, (rows, k)),
        topk_logprobs_PK=unpack_array(response.topk_logprobs, logprob_dtype, (rows, k)),
        token_logprobs_P=token_logprobs,
        token_ranks_P=token_ranks,
        token_ids_N=token_ids,
        offsets_N2=offsets,
        extra_logprobs_PE=extra,
    )


def build_request(
    request_id: str,
    token_ids: np.ndarray | list[int] | None = None,
    *,
    text: str | None = None,
    top_k: int = 32,
    score_from: int = 0,
    float16: bool = False,
    return_token_logprobs: bool = False,
    extra_ids_NE: np.ndarray | None = None,
) -> teacher_pb2.ScoreRequest:
    """A ScoreRequest from either teacher token ids or text (exactly one)."""
    if (token_ids is None) == (text is None):
        raise ValueError("pass exactly one of token_ids and text")
    request = teacher_pb2.ScoreRequest(
        request_id=request_id,
        top_k=top_k,
        score_from=score_from,
        logprobs_dtype=teacher_pb2.FLOAT16 if float16 else teacher_pb2.FLOAT32,
        return_token_logprobs=return_token_logprobs,
    )
    if text is not None:
        request.text = text
    else:
        request.token_ids.ids.extend(np.asarray(token_ids, dtype=np.int64).tolist())
    if extra_ids_NE is not None:
        extra = np.asarray(extra_ids_NE)
        if extra.ndim != 2:
            raise ValueError(f"extra_ids_NE must be 2-D [N, E], got shape {extra.shape}")
        request.extra_ids.extend(extra.reshape(-1).tolist())
        request.extra_per_position = extra.shape[1]
    return request
