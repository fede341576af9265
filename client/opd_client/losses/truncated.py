"""Reverse KL truncated to a support S_t: the paper's fix (LSM) and the two forms it is
compared with.

Why this module exists: these are the losses the trainer minimises (DESIGN.md §1). They
take the student's logits *on the support only* (from `support_logits` or a gather of full
logits) and a `SupportBatch`, so they never see the vocabulary, the model or the wire.

The three forms differ only in how log π on S_t is obtained and which terms get a
gradient:

    LSM (renormalize=True)   π̂ = softmax_S(z),  q̂ = softmax_S(log q)
                             ℓ_t = Σ_{v∈S_t} π̂(v) (log π̂(v) − log q̂(v))
    unnormalised (False)     π(v) = exp(z_v − log Z_t),  q as sent
                             ℓ_t = Σ_{v∈S_t} π(v) (log π(v) − log q(v))
    stop-gradient            ℓ_t = −Σ_{v∈S_t} π(v) [log q(v) − sg(log π(v))]

Differentiating the unnormalised form gives Σ_S π ∇log π (log π − log q) **+ Σ_S π ∇log π**;
the second term is ∇(Σ_S π), the gradient of the mass on S, so descent pushes mass off the
support: the collapse. Renormalising makes that term ∇1 = 0; the stop-gradient form drops it.
The teacher side never gets a gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from opd_client.losses.masked import compute_dtype, masked_log_softmax, masked_probs, token_mean
from opd_client.losses.support import SupportBatch


def _check_logits(student_logits_BTK: Tensor, batch: SupportBatch) -> None:
    if student_logits_BTK.shape != batch.support_ids_BTK.shape:
        raise ValueError(
            "student_logits_BTK must have the support's shape"
            f" {tuple(batch.support_ids_BTK.shape)}, got {tuple(student_logits_BTK.shape)}"
        )


def _student_teacher_logp(
    student_logits_BTK: Tensor,
    batch: SupportBatch,
    renormalize: bool,
    student_logz_BT: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(log π_S, log q_S, slot mask), both log-probs 0 at masked slots and in compute dtype."""
    _check_logits(student_logits_BTK, batch)
    mask_BTK = batch.support_mask_BTK & batch.mask_BT.unsqueeze(-1)
    dtype = compute_dtype(student_logits_BTK, batch.teacher_logprobs_BTK)
    teacher_BTK = batch.teacher_logprobs_BTK.detach().to(dtype)
    zero = teacher_BTK.new_zeros(())
    if renormalize:
        return (
            masked_log_softmax(student_logits_BTK.to(dtype), mask_BTK),
            masked_log_softmax(teacher_BTK, mask_BTK),
            mask_BTK,
        )
    if student_logz_BT is None:
        raise ValueError("renormalize=False needs student_logz_BT, the full log-normaliser log Z_t")
    if student_logz_BT.shape != batch.mask_BT.shape:
        raise ValueError(
            f"student_logz_BT must have shape {tuple(batch.mask_BT.shape)},"
            f" got {tuple(student_logz_BT.shape)}"
        )
    z_BTK = torch.where(mask_BTK, student_logits_BTK.to(dtype), zero)
    logz_BT = torch.where(batch.mask_BT, student_logz_BT.to(dtype), zero)
    logp_BTK = torch.where(mask_BTK, z_BTK - logz_BT.unsqueeze(-1), zero)
    return logp_BTK, torch.where(mask_BTK, teacher_BTK, zero), mask_BTK


def truncated_rkl(
    student_logits_BTK: Tensor,
    batch: SupportBatch,
    renormalize: bool = True,
    student_logz_BT: Tensor | None = None,
) -> Tensor:
    """Reverse KL on the support S_t, token-mean over the batch.

        L = (1 / Σ_i |o_i|) Σ_i Σ_t m_t Σ_{v∈S_t} π̂(v) (log π̂(v) − log q̂(v))

    With `renormalize=True` (LSM, the paper's fix) π̂ and q̂ are softmaxes over the
    unmasked slots of S_t. With `renormalize=False`, π(v) = exp(z_v − log Z_t) and q is the
    teacher's log-prob as sent: the unnormalised form the paper shows collapsing.

    Args:
        student_logits_BTK: float [B, T, K], the student's logits z at `batch.support_ids_BTK`
            (any constant shift per position is fine when renormalising; with
            `renormalize=False` they must be the logits whose log-normaliser is
            `student_logz_BT`).
        batch: the support and the teacher's log-probs on it.
        renormalize: LSM when True; the unnormalised truncated RKL when False.
        student_logz_BT: float [B, T], log Σ_{v∈V} exp(z_v) over the *full* vocabulary
            (see `student_logz`); required when `renormalize=False`, ignored otherwise.

    Returns:
        A scalar in float32 (float64 if the inputs are); 0 with zero gradients when every
        position is masked. Masked slots and positions contribute nothing.
    """
    loss_BT = truncated_rkl_per_position(student_logits_BTK, batch, renormalize, student_logz_BT)
    return token_mean(loss_BT, batch.mask_BT)


def truncated_rkl_per_position(
    student_logits_BTK: Tensor,
    batch: SupportBatch,
    renormalize: bool = True,
    student_logz_BT: Tensor | None = None,
) -> Tensor:
    """ℓ_t of `truncated_rkl` at every position, before the token-mean: [B, T].

        ℓ_t = Σ_{v∈S_t} π̂(v) (log π̂(v) − log q̂(v))      (π, q with renormalize=False)

    Masked positions hold 0. Summing a row gives that response's share of the loss (the
    trainer's per-teacher and per-task metrics group rows this way); `token_mean` of it
    is `truncated_rkl`.
    """
    logp_BTK, logq_BTK, mask_BTK = _student_teacher_logp(
        student_logits_BTK, batch, renormalize, student_logz_BT
    )
    p_BTK = masked_probs(logp_BTK, mask_BTK)
    loss_BT = (p_BTK * (logp_BTK - logq_BTK)).sum(-1)
    return torch.where(batch.mask_BT, loss_BT, loss_BT.new_zeros(()))


def stopgrad_truncated_rkl(
    student_logits_BTK: Tensor,
    batch: SupportBatch,
    renormalize: bool = False,
    student_logz_BT: Tensor | None = None,
) -> Tensor:
    """Truncated reverse KL with the log-ratio's student term stopped, token-mean.

        L = −(1 / Σ_i |o_i|) Σ_i Σ_t m_t Σ_{v∈S_t} π(v) [log q(v) − sg(log π(v))]

    Its gradient is Σ_S π ∇log π (log π − log q): the unnormalised form's gradient without
    the "+1" mass term, which is why the default is `renormalize=False` (needs
    `student_logz_BT`). With `renormalize=True` (π̂, q̂ on S_t) the value and the gradient
    equal `truncated_rkl`'s.

    Args:
        student_logits_BTK, batch, renormalize, student_logz_BT: as for `truncated_rkl`.

    Returns:
        A scalar; 0 with zero gradients when every position is masked.
    """
    logp_BTK, logq_BTK, mask_BTK = _student_teacher_logp(
        student_logits_BTK, batch, renormalize, student_logz_BT
    )
    p_BTK = masked_probs(logp_BTK, mask_BTK)
    loss_BT = -(p_BTK * (logq_BTK - logp_BTK.detach())).sum(-1)
    return token_mean(loss_BT, batch.mask_BT)
