"""Sampled-token OPD: the baseline the paper fixes.

Why this module exists: it is the comparison every experiment needs (DESIGN.md §1). The
reward is the per-token log-ratio of the token the student actually sampled,
r_t = log q(y_t|c_t) − log π_old(y_t|c_t), optimised as a policy gradient with a PPO clip.
It needs one teacher log-prob per position, no support. Across tokenizers that log-prob
exists only where the student token maps to exactly one teacher token; the caller masks
the other positions. This module knows nothing about tokenizers or the wire.
"""

from __future__ import annotations

import torch
from torch import Tensor

from opd_client.losses.masked import compute_dtype, token_mean


def discounted_returns(reward_BT: Tensor, mask_BT: Tensor, gamma: float) -> Tensor:
    """Return to go, A_t = Σ_{t' ≥ t} γ^{t'−t} m_{t'} r_{t'}, along each sequence.

    γ = 0 is the token-level advantage (A_t = r_t), γ = 1 the undiscounted sequence-level
    return. Masked rewards count as 0 (whatever they hold); distances count every position.

    Args:
        reward_BT: float [B, T].
        mask_BT: bool [B, T].
        gamma: discount in [0, 1].

    Returns:
        [B, T] in `compute_dtype(reward_BT)`.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    r_BT = torch.where(mask_BT, reward_BT.to(compute_dtype(reward_BT)), 0.0)
    if gamma == 0.0:
        return r_BT
    if gamma == 1.0:
        return r_BT.flip(-1).cumsum(-1).flip(-1)
    out_BT = torch.empty_like(r_BT)
    running_B = r_BT.new_zeros(r_BT.shape[0])
    for t in range(r_BT.shape[1] - 1, -1, -1):
        running_B = r_BT[:, t] + gamma * running_B
        out_BT[:, t] = running_B
    return out_BT


def sampled_token_opd(
    student_logprobs_BT: Tensor,
    old_logprobs_BT: Tensor,
    teacher_logprobs_BT: Tensor,
    mask_BT: Tensor,
    gamma: float = 0.0,
    clip: float = 0.2,
) -> Tensor:
    """PPO-clipped policy gradient on the per-token teacher log-ratio, token-mean.

        r_t = log q(y_t|c_t) − log π_old(y_t|c_t)
        A_t = Σ_{t' ≥ t} γ^{t'−t} r_{t'}
        ρ_t = exp(log π_θ(y_t|c_t) − log π_old(y_t|c_t))
        L   = −(1 / Σ_t m_t) Σ_t m_t min(ρ_t A_t, clip(ρ_t, 1 − ε, 1 + ε) A_t)

    The reward and the advantage are constants (no gradient to the teacher or to π_old);
    only ρ_t carries the gradient, so at ρ = 1 it is −A_t ∇log π_θ(y_t|c_t).

    Args:
        student_logprobs_BT: float [B, T], log π_θ(y_t|c_t) under the current parameters.
        old_logprobs_BT: float [B, T], log π_old(y_t|c_t) from the policy that sampled.
        teacher_logprobs_BT: float [B, T], log q(y_t|c_t); anything (−58, −inf, NaN) where
            masked.
        mask_BT: bool [B, T].
        gamma: discount of the return to go, in [0, 1]; 0 is the paper's baseline.
        clip: PPO clip ε > 0.

    Returns:
        A scalar; 0 with zero gradients when every position is masked.
    """
    if clip <= 0.0:
        raise ValueError(f"clip must be > 0, got {clip}")
    dtype = compute_dtype(student_logprobs_BT, old_logprobs_BT, teacher_logprobs_BT)
    zero = torch.zeros((), dtype=dtype)
    new_BT = torch.where(mask_BT, student_logprobs_BT.to(dtype), zero)
    old_BT = torch.where(mask_BT, old_logprobs_BT.detach().to(dtype), zero)
    teacher_BT = torch.where(mask_BT, teacher_logprobs_BT.detach().to(dtype), zero)
    advantage_BT = discounted_returns(teacher_BT - old_BT, mask_BT, gamma)
    ratio_BT = (new_BT - old_BT).exp()
    surrogate_BT = torch.minimum(
        ratio_BT * advantage_BT, ratio_BT.clamp(1.0 - clip, 1.0 + clip) * advantage_BT
    )
    return token_mean(-surrogate_BT, mask_BT)
