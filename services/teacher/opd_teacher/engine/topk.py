"""Turns log-probability rows into the contract's top-K arrays.

Shared by every backend that has full rows (hf, the test fakes), so that sorting, ranks,
the NaN last row and the extra ids are computed one way only.
"""

from __future__ import annotations

import numpy as np
import torch

from opd_teacher.types import ScoreJob, ScoreResult


def result_from_logprobs(logprobs_PV: torch.Tensor, job: ScoreJob) -> ScoreResult:
    """Builds a job's result from its float32 log-softmax rows.

    logprobs_PV: [P, V], row p the distribution after the first score_from+p+1 tokens.
    """
    topk_logprobs_PK, topk_ids_PK = torch.topk(logprobs_PV, job.top_k, dim=-1, sorted=True)
    result = ScoreResult(
        topk_ids_PK=topk_ids_PK.to(torch.int32).numpy(),
        topk_logprobs_PK=topk_logprobs_PK.numpy(),
    )
    num_positions = logprobs_PV.shape[0]
    if job.return_token_logprobs:
        # Row p scores input token score_from+p+1; the last row has no next token.
        next_ids = torch.from_numpy(job.token_ids_N[job.score_from + 1 :].astype(np.int64))
        token_logprobs_P = torch.full((num_positions,), float("nan"))
        token_ranks_P = torch.zeros(num_positions, dtype=torch.int32)
        if next_ids.numel():
            rows = logprobs_PV[:-1]
            actual = rows.gather(1, next_ids[:, None])
            token_logprobs_P[:-1] = actual[:, 0]
            token_ranks_P[:-1] = (rows > actual).sum(dim=1).to(torch.int32) + 1
        result.token_logprobs_P = token_logprobs_P.numpy()
        result.token_ranks_P = token_ranks_P.numpy()
    if job.extra_ids_NE is not None:
        extra_PE = torch.from_numpy(job.extra_ids_NE[job.score_from :].astype(np.int64))
        result.extra_logprobs_PE = logprobs_PV.gather(1, extra_PE).numpy()
    return result
