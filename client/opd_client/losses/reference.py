"""Full-vocabulary divergences: reverse KL and the generalised JSD.

Why this module exists: they need the teacher's *whole* row over the vocabulary, which the
scoring service does not send (it sends top-K), so the trainer cannot use them against a
remote teacher. They serve as references: in tests (LSM with K = V must equal `full_rkl`)
and with an in-process teacher. They know nothing about supports or the wire.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from opd_client.losses.masked import compute_dtype, token_mean


def _log_softmax_pair(
    student_logits_BTV: Tensor, teacher_logits_BTV: Tensor, mask_BT: Tensor
) -> tuple[Tensor, Tensor]:
    """Both sides log-softmaxed in the compute dtype, masked rows replaced by zeros first
    (so −inf or NaN there never reaches the arithmetic, forward or backward)."""
    if student_logits_BTV.shape != teacher_logits_BTV.shape:
        raise ValueError(
            f"student and teacher logits must have one shape, got {tuple(student_logits_BTV.shape)}"
            f" and {tuple(teacher_logits_BTV.shape)}"
        )
    dtype = compute_dtype(student_logits_BTV, teacher_logits_BTV)
    live_BT1 = mask_BT.unsqueeze(-1)
    zero = torch.zeros((), dtype=dtype)
    student_BTV = torch.where(live_BT1, student_logits_BTV.to(dtype), zero)
    teacher_BTV = torch.where(live_BT1, teacher_logits_BTV.detach().to(dtype), zero)
    return torch.log_softmax(student_BTV, dim=-1), torch.log_softmax(teacher_BTV, dim=-1)


def _kl_BT(logp_BTV: Tensor, logr_BTV: Tensor) -> Tensor:
    """KL(p ‖ r) per position, with 0 · log 0 = 0 where p underflows."""
    p_BTV = logp_BTV.exp()
    # Select before multiplying: 0 · (−inf) would be NaN in the forward or backward pass.
    log_ratio_BTV = torch.where(p_BTV > 0, logp_BTV - logr_BTV, 0.0)
    return (p_BTV * log_ratio_BTV).sum(-1)


def full_rkl(student_logits_BTV: Tensor, teacher_logits_BTV: Tensor, mask_BT: Tensor) -> Tensor:
    """Full reverse KL, token-mean over the batch.

        L = (1 / Σ_t m_t) Σ_t m_t Σ_{v∈V} π(v) (log π(v) − log q(v))

    Args:
        student_logits_BTV: float [B, T, V], student logits.
        teacher_logits_BTV: float [B, T, V], teacher logits or log-probs (log-softmaxed
            here, so either works); never gets a gradient.
        mask_BT: bool [B, T].

    Returns:
        A scalar; 0 when every position is masked.
    """
    logp_BTV, logq_BTV = _log_softmax_pair(student_logits_BTV, teacher_logits_BTV, mask_BT)
    return token_mean(_kl_BT(logp_BTV, logq_BTV), mask_BT)


def generalized_jsd(
    student_logits_BTV: Tensor,
    teacher_logits_BTV: Tensor,
    mask_BT: Tensor,
    beta: float = 0.5,
) -> Tensor:
    """Generalised Jensen–Shannon divergence (GKD, Agarwal et al. 2024), token-mean.

        M = (1 − β) π + β q
        JSD_β = β KL(q ‖ M) + (1 − β) KL(π ‖ M)         for 0 < β < 1
        JSD_0 = KL(q ‖ π) (forward),  JSD_1 = KL(π ‖ q) (reverse)

    The convention (which end is which, and the endpoints) is TRL's `generalized_jsd_loss`,
    so numbers compare directly.

    Args:
        student_logits_BTV, teacher_logits_BTV, mask_BT: as for `full_rkl`.
        beta: interpolation coefficient in [0, 1].

    Returns:
        A scalar; 0 when every position is masked.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    logp_BTV, logq_BTV = _log_softmax_pair(student_logits_BTV, teacher_logits_BTV, mask_BT)
    if beta == 0.0:
        return token_mean(_kl_BT(logq_BTV, logp_BTV), mask_BT)
    if beta == 1.0:
        return token_mean(_kl_BT(logp_BTV, logq_BTV), mask_BT)
    logm_BTV = torch.logaddexp(logp_BTV + math.log1p(-beta), logq_BTV + math.log(beta))
    jsd_BT = beta * _kl_BT(logq_BTV, logm_BTV) + (1.0 - beta) * _kl_BT(logp_BTV, logm_BTV)
    return token_mean(jsd_BT, mask_BT)
