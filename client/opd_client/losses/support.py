"""The `SupportBatch` container and the four ways to choose the support S_t.

Why this module exists: every support-based loss (LSM, stop-gradient, unnormalised,
entropy-filtered) takes the same input, so the choice of support is made once, here, and
the losses never know which choice it was (DESIGN.md §1, "Variants"). Ids are already in
the *student* vocabulary: mapping teacher tokens into it is the tokenizer bridge's job
(`opd_client.align`), which marks a token that did not map with a negative id. This module
knows nothing about tokenizers, the wire format or models.

Invariant every builder keeps: unmasked slots of one position hold distinct ids, and every
id (masked or not) is a valid index (masked slots are set to 0), so gathers never fail.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SupportBatch:
    """The support S_t and the teacher's log-probs on it, for B sequences of T positions.

    Attributes:
        support_ids_BTK: int64 [B, T, K], ids in the student vocabulary; 0 in masked slots.
        teacher_logprobs_BTK: float [B, T, K], log q(v | c_t) on the support; anything
            (−inf, −58, NaN) in masked slots.
        support_mask_BTK: bool [B, T, K]; False for padding slots and for teacher tokens
            that did not map into the student vocabulary.
        mask_BT: bool [B, T]; False for prompt, padding, unaligned and special-token
            positions. The loss is normalised by its count.
    """

    support_ids_BTK: Tensor
    teacher_logprobs_BTK: Tensor
    support_mask_BTK: Tensor
    mask_BT: Tensor

    def __post_init__(self) -> None:
        shape = tuple(self.support_ids_BTK.shape)
        if len(shape) != 3:
            raise ValueError(f"support_ids_BTK must be [B, T, K], got {shape}")
        if self.support_ids_BTK.is_floating_point() or self.support_ids_BTK.dtype == torch.bool:
            raise ValueError(f"support_ids_BTK must be integer, got {self.support_ids_BTK.dtype}")
        for name in ("teacher_logprobs_BTK", "support_mask_BTK"):
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"{name} must have shape {shape}, got {got}")
        if not self.teacher_logprobs_BTK.is_floating_point():
            raise ValueError("teacher_logprobs_BTK must be floating point")
        if tuple(self.mask_BT.shape) != shape[:2]:
            raise ValueError(
                f"mask_BT must have shape {shape[:2]}, got {tuple(self.mask_BT.shape)}"
            )
        for name in ("support_mask_BTK", "mask_BT"):
            if getattr(self, name).dtype != torch.bool:
                raise ValueError(f"{name} must be bool, got {getattr(self, name).dtype}")

    @property
    def k(self) -> int:
        """Support slots per position (K)."""
        return int(self.support_ids_BTK.shape[-1])


def _slot_mask(ids_BTK: Tensor, logprobs_BTK: Tensor, mask_BT: Tensor) -> Tensor:
    """A slot takes part when its id mapped (≥ 0), its log-prob is not NaN/−inf and its
    position is unmasked."""
    finite = ~torch.isnan(logprobs_BTK) & (logprobs_BTK > float("-inf"))
    return (ids_BTK >= 0) & finite & mask_BT.unsqueeze(-1)


def _build(
    ids_BTK: Tensor, logprobs_BTK: Tensor, slot_BTK: Tensor, mask_BT: Tensor
) -> SupportBatch:
    return SupportBatch(
        support_ids_BTK=torch.where(slot_BTK, ids_BTK, 0).long(),
        teacher_logprobs_BTK=logprobs_BTK,
        support_mask_BTK=slot_BTK,
        mask_BT=mask_BT,
    )


def teacher_topk_support(
    teacher_ids_BTK: Tensor,
    teacher_logprobs_BTK: Tensor,
    mask_BT: Tensor,
    k: int | None = None,
) -> SupportBatch:
    """S_t = TopK(q(·|c_t)), the paper's default support.

    Args:
        teacher_ids_BTK: int [B, T, K], the teacher's top-K mapped to student ids, rows
            sorted by teacher log-prob descending (as the contract sends them); < 0 where a
            token did not map.
        teacher_logprobs_BTK: float [B, T, K], the teacher's log-probs of those tokens.
        mask_BT: bool [B, T].
        k: keep only the first k slots (the top k), 1 ≤ k ≤ K; None keeps all K.
    """
    if k is not None:
        if not 1 <= k <= teacher_ids_BTK.shape[-1]:
            raise ValueError(f"k must be in [1, {teacher_ids_BTK.shape[-1]}], got {k}")
        teacher_ids_BTK, teacher_logprobs_BTK = (
            teacher_ids_BTK[..., :k],
            teacher_logprobs_BTK[..., :k],
        )
    slot = _slot_mask(teacher_ids_BTK, teacher_logprobs_BTK, mask_BT)
    return _build(teacher_ids_BTK, teacher_logprobs_BTK, slot, mask_BT)


def student_topk_support(
    student_topk_ids_BTK: Tensor,
    extra_logprobs_BTK: Tensor,
    mask_BT: Tensor,
) -> SupportBatch:
    """S_t = TopK(π(·|c_t)): the student's own top-K, scored by the teacher.

    Args:
        student_topk_ids_BTK: int [B, T, K], the student's top-K ids at each position; < 0
            where the id has no teacher counterpart.
        extra_logprobs_BTK: float [B, T, K], the teacher's log-probs at those ids (the
            contract's `extra_logprobs`, sent with `extra_ids`); NaN where not scored.
        mask_BT: bool [B, T].
    """
    slot = _slot_mask(student_topk_ids_BTK, extra_logprobs_BTK, mask_BT)
    return _build(student_topk_ids_BTK, extra_logprobs_BTK, slot, mask_BT)


def teacher_topk_with_sampled_support(
    teacher_ids_BTK: Tensor,
    teacher_logprobs_BTK: Tensor,
    sampled_ids_BT: Tensor,
    sampled_teacher_logprobs_BT: Tensor,
    mask_BT: Tensor,
) -> SupportBatch:
    """S_t = TopK(q(·|c_t)) ∪ {y_t}: K + 1 slots, the last one the sampled token.

    The extra slot is masked when y_t is already in the (mapped) top-K, so no id counts
    twice, and when the teacher's log-prob of y_t is missing (NaN or −inf).

    Args:
        teacher_ids_BTK, teacher_logprobs_BTK, mask_BT: as for `teacher_topk_support`.
        sampled_ids_BT: int [B, T], the student's sampled token y_t.
        sampled_teacher_logprobs_BT: float [B, T], log q(y_t | c_t) (the contract's
            `token_logprobs`, aligned to student positions).

    Returns:
        A `SupportBatch` with K + 1 slots.
    """
    top_slot = _slot_mask(teacher_ids_BTK, teacher_logprobs_BTK, mask_BT)
    already = ((teacher_ids_BTK == sampled_ids_BT.unsqueeze(-1)) & top_slot).any(-1)
    sampled_slot = _slot_mask(
        sampled_ids_BT.unsqueeze(-1), sampled_teacher_logprobs_BT.unsqueeze(-1), mask_BT
    ) & ~already.unsqueeze(-1)
    ids = torch.cat([teacher_ids_BTK.long(), sampled_ids_BT.long().unsqueeze(-1)], dim=-1)
    lp = torch.cat(
        [
            teacher_logprobs_BTK,
            sampled_teacher_logprobs_BT.to(teacher_logprobs_BTK.dtype).unsqueeze(-1),
        ],
        dim=-1,
    )
    return _build(ids, lp, torch.cat([top_slot, sampled_slot], dim=-1), mask_BT)


def teacher_student_intersection_support(
    teacher_ids_BTK: Tensor,
    teacher_logprobs_BTK: Tensor,
    student_topk_ids_BTJ: Tensor,
    mask_BT: Tensor,
) -> SupportBatch:
    """S_t = TopK(q(·|c_t)) ∩ TopJ(π(·|c_t)): teacher slots the student's top-J also holds.

    Keeps the teacher's K slots and masks those whose id is not among the student's top J
    (J may differ from K). A position whose intersection is empty contributes 0 to the
    loss but still counts in the token-mean (its `mask_BT` is left as given).

    Args:
        teacher_ids_BTK, teacher_logprobs_BTK, mask_BT: as for `teacher_topk_support`.
        student_topk_ids_BTJ: int [B, T, J], the student's top-J ids.
    """
    slot = _slot_mask(teacher_ids_BTK, teacher_logprobs_BTK, mask_BT)
    in_student = (teacher_ids_BTK.unsqueeze(-1) == student_topk_ids_BTJ.unsqueeze(-2)).any(-1)
    return _build(teacher_ids_BTK, teacher_logprobs_BTK, slot & in_student, mask_BT)
