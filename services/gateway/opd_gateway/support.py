"""Pure logic of /v1/support: a teacher `ScoreOutput` -> one row per input token.

Why this module exists: the row arithmetic is where an off-by-one would hide, so it is
kept apart from HTTP and gRPC and tested on its own. The contract's row p predicts
token score_from+p+1; so token i (i > score_from) takes its log-prob and rank from
row r = i-1-score_from and its top-K alternatives from the same row; tokens 0..score_from
have no prediction. The last row (after the final token) becomes `next`.

Log-probs stay numpy float32 scalars until orjson writes them in their shortest float32
form, so the JSON holds exactly the teacher's values. Building these dicts is the
gateway's main cost per request (benchmarks/gateway.py measures it), which is why each
row's top-K is three parallel lists (ids, tokens, logprobs: the last one a numpy row that
orjson writes in C) rather than K small objects: measured, that halves the build time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from opd_client.types import ScoreOutput

WORST_TOKENS = 5
_NO_TOP: dict[str, list[Any]] = {"ids": [], "tokens": [], "logprobs": []}


def topk_entropy_P(topk_logprobs_PK: np.ndarray) -> np.ndarray:
    """[P] entropy (nats) of each row's top-K renormalised to sum to 1, in float64."""
    logp = topk_logprobs_PK.astype(np.float64)
    finite = np.isfinite(logp)
    logp = np.where(finite, logp, -np.inf)
    shifted = logp - np.max(logp, axis=1, keepdims=True)
    log_z = np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))
    log_q = shifted - log_z
    q = np.exp(log_q)
    return -np.sum(q * np.where(q > 0, log_q, 0.0), axis=1)  # 0 * log 0 = 0


def build_support(
    *,
    pieces: Sequence[str],
    out: ScoreOutput,
    token_ids_N: np.ndarray,
    starts_N: np.ndarray,
    ends_N: np.ndarray,
    score_from: int,
    surprise_threshold: float,
    student_logprobs: Sequence[float | None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """(tokens, next, summary) as JSON-ready dicts matching schemas.TokenRow/TopK/Summary.

    `pieces` must cover every id the teacher can return (0..vocab_size-1)."""
    assert out.token_logprobs_P is not None and out.token_ranks_P is not None
    num_tokens = int(token_ids_N.shape[0])
    num_rows = out.num_positions
    if num_rows != num_tokens - score_from:
        raise ValueError(f"teacher sent {num_rows} rows for {num_tokens} tokens from {score_from}")
    ids = token_ids_N.tolist()
    starts, ends = starts_N.tolist(), ends_N.tolist()
    topk_ids = out.topk_ids_PK.tolist()
    topk_logprobs_PK = out.topk_logprobs_PK.astype(np.float32, copy=False)
    token_logprobs = out.token_logprobs_P.astype(np.float32, copy=False)
    # list() of a float32 array yields numpy scalars in one C loop: orjson writes them in
    # their shortest float32 form, with no per-element Python arithmetic here.
    logprobs, surprises = list(token_logprobs), list(-token_logprobs)
    entropies = list(topk_entropy_P(out.topk_logprobs_PK).astype(np.float32))
    ranks = out.token_ranks_P.tolist()

    def top(row: int) -> dict[str, Any]:
        ids_K = topk_ids[row]
        return {
            "ids": ids_K,
            "tokens": [pieces[i] for i in ids_K],
            "logprobs": topk_logprobs_PK[row],
        }

    first_predicted = score_from + 1
    tokens: list[dict[str, Any]] = [
        {
            "index": i,
            "id": ids[i],
            "token": pieces[ids[i]],
            "start": starts[i],
            "end": ends[i],
            "predicted": False,
            "logprob": None,
            "surprise": None,
            "rank": None,
            "entropy": None,
            "top": _NO_TOP,
        }
        for i in range(min(first_predicted, num_tokens))
    ]
    for r in range(num_rows - 1):  # row r predicts token r + first_predicted
        i = r + first_predicted
        tokens.append(
            {
                "index": i,
                "id": ids[i],
                "token": pieces[ids[i]],
                "start": starts[i],
                "end": ends[i],
                "predicted": True,
                "logprob": logprobs[r],
                "surprise": surprises[r],
                "rank": ranks[r],
                "entropy": entropies[r],
                "top": top(r),
            }
        )

    if student_logprobs is not None:
        for row, student in zip(tokens, student_logprobs, strict=True):
            row["student_logprob"] = student
            row["log_ratio"] = (
                None
                if student is None or not row["predicted"]
                else float(student) - float(row["logprob"])
            )

    surprise = -token_logprobs[: num_rows - 1].astype(np.float64)
    summary = summarize(tokens, surprise, surprise_threshold)
    return tokens, top(num_rows - 1), summary


def summarize(
    tokens: list[dict[str, Any]], surprise: np.ndarray, surprise_threshold: float
) -> dict[str, Any]:
    """Mean/max surprise, tokens above the threshold and the worst few; `surprise` is
    [num predicted] in token order (the predicted tokens are the last ones)."""
    predicted = [row for row in tokens if row["predicted"]]
    summary: dict[str, Any] = {
        "num_tokens": len(tokens),
        "num_predicted": len(predicted),
        "mean_surprise": None,
        "max_surprise": None,
        "perplexity": None,
        "surprise_threshold": surprise_threshold,
        "above_threshold": 0,
        "worst": [],
        "mean_log_ratio": None,
    }
    if predicted:
        finite = surprise[np.isfinite(surprise)]
        if finite.size:
            mean = float(np.mean(finite))
            summary.update(
                mean_surprise=mean,
                max_surprise=float(np.max(finite)),
                perplexity=float(np.exp(min(mean, 700.0))),
            )
        summary["above_threshold"] = int(np.sum(surprise > surprise_threshold))
        order = np.argsort(-surprise, kind="stable")[:WORST_TOKENS]
        summary["worst"] = [
            {
                "index": predicted[j]["index"],
                "token": predicted[j]["token"],
                "surprise": predicted[j]["surprise"],
                "rank": predicted[j]["rank"],
            }
            for j in order.tolist()
        ]
    ratios = [row["log_ratio"] for row in tokens if row.get("log_ratio") is not None]
    if ratios:
        summary["mean_log_ratio"] = float(np.mean(ratios))
    return summary
