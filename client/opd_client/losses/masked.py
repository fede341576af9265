"""Masked reductions every loss in this package shares.

Why this module exists: padding slots, unmapped teacher tokens and masked positions may hold
anything (−inf, −58, NaN, garbage ids). Arithmetic such as `−inf · 0` or `−inf − (−inf)`
turns into NaN in the forward pass or the backward pass, so masked values are replaced by
`torch.where` *before* any arithmetic, never multiplied away afterwards. Doing that in one
place keeps every loss NaN-free on an all-masked batch. It knows nothing about the method.
"""

from __future__ import annotations

import torch
from torch import Tensor


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype losses compute in: float32 at least, float64 if any input is float64."""
    dtype = torch.float32
    for tensor in tensors:
        if tensor.is_floating_point():
            dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def masked_log_softmax(x_BTK: Tensor, mask_BTK: Tensor) -> Tensor:
    """Log-softmax over the unmasked slots of the last dimension.

        log p̂_k = x_k − log Σ_{j : m_j} exp(x_j)   where m_k,   0 elsewhere.

    Args:
        x_BTK: logits or log-probs, [..., K], any float dtype; masked slots may hold
            −inf or NaN.
        mask_BTK: bool [..., K], True where the slot takes part.

    Returns:
        [..., K] in `compute_dtype(x_BTK)`; exactly 0 at masked slots, and 0 everywhere on
        a row with no unmasked slot. Gradients reach unmasked slots only.
    """
    x = x_BTK.to(compute_dtype(x_BTK))
    zero = x.new_zeros(())
    x = torch.where(mask_BTK, x, zero)
    # The max is a constant shift (lse(x) = m + lse(x − m) for any m), so it is detached.
    shift = torch.where(mask_BTK, x.detach(), torch.finfo(x.dtype).min).amax(-1, keepdim=True)
    shift = torch.where(mask_BTK.any(-1, keepdim=True), shift, zero)
    shifted = torch.where(mask_BTK, x - shift, zero)
    sum_exp = torch.where(mask_BTK, shifted.exp(), zero).sum(-1, keepdim=True)
    log_z = sum_exp.clamp_min(torch.finfo(x.dtype).tiny).log()
    return torch.where(mask_BTK, shifted - log_z, zero)


def masked_probs(logp_BTK: Tensor, mask_BTK: Tensor) -> Tensor:
    """exp(logp) at unmasked slots, 0 at masked ones (shape and dtype of `logp_BTK`)."""
    return torch.where(mask_BTK, logp_BTK.exp(), logp_BTK.new_zeros(()))


def token_mean(loss_BT: Tensor, mask_BT: Tensor) -> Tensor:
    """Token-mean over the whole batch, as the paper normalises: Σ m_t ℓ_t / max(Σ m_t, 1).

    Args:
        loss_BT: per-position loss [B, T]; masked positions may hold anything.
        mask_BT: bool [B, T].

    Returns:
        A scalar; 0 (with zero gradients) when every position is masked.
    """
    total = torch.where(mask_BT, loss_BT, loss_BT.new_zeros(())).sum()
    return total / mask_BT.sum().clamp_min(1).to(loss_BT.dtype)
