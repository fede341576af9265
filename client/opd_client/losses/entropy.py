"""Training on the high-entropy positions only: the student's entropy and the top-x% filter.

Why this module exists: one variant of the loss keeps only the positions where the
student is most uncertain (DESIGN.md §1, "training only on the top-x% positions by the
student's entropy"). The selection needs H(π(·|c_t)) over the full vocabulary, which the
fused path never materialises, so it is computed here chunked from hidden states and
without gradient (it chooses positions; it is not a loss term). The filter itself only
rewrites `mask_BT` and leaves the loss untouched.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from opd_client.losses.fused import DEFAULT_VOCAB_CHUNK, _check_chunk, _flatten
from opd_client.losses.masked import compute_dtype
from opd_client.losses.support import SupportBatch


def entropy_from_logits(logits_BTV: Tensor) -> Tensor:
    """H_t = −Σ_v π(v) log π(v) = log Z_t − Σ_v π(v) z_v, from full logits [B, T, V] → [B, T].

    No gradient (the result is detached); float32 at least.
    """
    with torch.no_grad():
        logp_BTV = torch.log_softmax(logits_BTV.to(compute_dtype(logits_BTV)), dim=-1)
        p_BTV = logp_BTV.exp()
        return -(p_BTV * torch.where(p_BTV > 0, logp_BTV, 0.0)).sum(-1)


def student_entropy(
    hidden_BTD: Tensor,
    lm_head_VD: Tensor,
    chunk_size: int = DEFAULT_VOCAB_CHUNK,
) -> Tensor:
    """The student's entropy at every position, from hidden states, chunked over positions.

        z_t = W h_t,  H_t = log Σ_v exp(z_{t,v}) − Σ_v softmax(z_t)_v z_{t,v}

    Args:
        hidden_BTD: float [B, T, D].
        lm_head_VD: float [V, D].
        chunk_size: positions per chunk; peak extra memory ≈ 2 · chunk_size · V · 4 bytes.

    Returns:
        float32 (or float64) [B, T], detached.
    """
    _check_chunk(chunk_size)
    hidden_ND = _flatten(hidden_BTD, lm_head_VD)
    dtype = compute_dtype(hidden_ND, lm_head_VD)
    with torch.no_grad():
        w_VD = lm_head_VD.to(dtype)
        out_N = hidden_ND.new_empty(hidden_ND.shape[0], dtype=dtype)
        for start in range(0, hidden_ND.shape[0], chunk_size):
            stop = min(start + chunk_size, hidden_ND.shape[0])
            logits_CV = hidden_ND[start:stop].to(dtype) @ w_VD.T
            logz_C = torch.logsumexp(logits_CV, dim=-1)
            p_CV = (logits_CV - logz_C[:, None]).exp()
            out_N[start:stop] = logz_C - (p_CV * logits_CV).sum(-1)
    return out_N.view(hidden_BTD.shape[:2])


def entropy_top_fraction_mask(entropy_BT: Tensor, mask_BT: Tensor, fraction: float) -> Tensor:
    """Keep the ⌈fraction · n⌉ unmasked positions of highest entropy, over the whole batch.

    n = Σ m_t. Ties at the threshold are broken arbitrarily (torch.topk). The
    selection is batch-wide, not per sequence, so a confident sequence may keep nothing.

    Args:
        entropy_BT: float [B, T], e.g. from `student_entropy`.
        mask_BT: bool [B, T].
        fraction: in (0, 1]; 1 keeps every unmasked position.

    Returns:
        bool [B, T], a subset of `mask_BT`.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if entropy_BT.shape != mask_BT.shape:
        raise ValueError(f"entropy_BT {tuple(entropy_BT.shape)} ≠ mask_BT {tuple(mask_BT.shape)}")
    n_keep = math.ceil(fraction * int(mask_BT.sum()))
    keep_N = torch.zeros(mask_BT.numel(), dtype=torch.bool, device=mask_BT.device)
    if n_keep > 0:
        scores_N = torch.where(
            mask_BT.reshape(-1), entropy_BT.reshape(-1).float(), float("-inf")
        ).nan_to_num(nan=float("-inf"))
        keep_N[scores_N.topk(n_keep).indices] = True
    return keep_N.view(mask_BT.shape) & mask_BT


def filter_by_entropy(batch: SupportBatch, entropy_BT: Tensor, fraction: float) -> SupportBatch:
    """The same batch with `mask_BT` narrowed to the top `fraction` positions by entropy.

    The token-mean then divides by the kept count. See `entropy_top_fraction_mask`.
    """
    return dataclasses.replace(
        batch, mask_BT=entropy_top_fraction_mask(entropy_BT, batch.mask_BT, fraction)
    )
