"""Support builders, `SupportBatch` validation and the entropy filter.

Each builder is compared with a loop that states its rule one slot at a time.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_losses_reference import ref_entropy

from opd_client.losses import (
    SupportBatch,
    entropy_from_logits,
    entropy_top_fraction_mask,
    filter_by_entropy,
    student_entropy,
    student_topk_support,
    teacher_student_intersection_support,
    teacher_topk_support,
    teacher_topk_with_sampled_support,
)

NEG_INF, NAN = float("-inf"), float("nan")


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(7)


def _ids(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows).view(1, len(rows), -1)


def _lp(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64).view(1, len(rows), -1)


def test_teacher_topk_masks_unmapped_and_padding_and_keeps_valid_ids() -> None:
    ids = _ids([[5, -1, 3], [2, 4, 9]])
    lp = _lp([[-0.1, -2.0, -3.0], [-0.5, -1.0, NEG_INF]])
    batch = teacher_topk_support(ids, lp, torch.tensor([[True, False]]))
    assert batch.support_mask_BTK.tolist() == [[[True, False, True], [False, False, False]]]
    assert batch.support_ids_BTK.tolist() == [[[5, 0, 3], [0, 0, 0]]]
    assert batch.support_ids_BTK.dtype == torch.int64
    trimmed = teacher_topk_support(ids, lp, torch.tensor([[True, True]]), k=2)
    assert trimmed.k == 2
    assert trimmed.support_mask_BTK.tolist() == [[[True, False], [True, True]]]
    with pytest.raises(ValueError, match="k must be"):
        teacher_topk_support(ids, lp, torch.tensor([[True, True]]), k=4)


def test_student_topk_masks_unscored_ids() -> None:
    batch = student_topk_support(
        _ids([[1, 2, 3]]), _lp([[-0.2, NAN, -1.0]]), torch.tensor([[True]])
    )
    assert batch.support_mask_BTK.tolist() == [[[True, False, True]]]


def test_union_with_the_sampled_token_adds_a_slot_only_when_new() -> None:
    ids = _ids([[5, 3], [5, 3], [5, -1], [5, 3]])
    lp = _lp([[-0.1, -2.0]] * 4)
    sampled = torch.tensor([[3, 8, 8, 9]])
    sampled_lp = torch.tensor([[-2.0, -4.0, -4.0, NAN]], dtype=torch.float64)
    batch = teacher_topk_with_sampled_support(
        ids, lp, sampled, sampled_lp, torch.ones(1, 4, dtype=torch.bool)
    )
    assert batch.k == 3
    # Already in the top-K → masked; new → kept; missing teacher log-prob → masked.
    assert batch.support_mask_BTK[0, :, 2].tolist() == [False, True, True, False]
    assert batch.support_ids_BTK[0, 1].tolist() == [5, 3, 8]
    assert batch.teacher_logprobs_BTK[0, 1, 2].item() == -4.0


def test_intersection_masks_slots_outside_the_students_top_j(gen: torch.Generator) -> None:
    b, t, k, j, v = 2, 6, 5, 3, 9
    ids = torch.randint(0, v, (b, t, k), generator=gen)
    student = torch.randint(0, v, (b, t, j), generator=gen)
    lp = torch.randn(b, t, k, generator=gen, dtype=torch.float64)
    mask = torch.rand(b, t, generator=gen) < 0.7
    batch = teacher_student_intersection_support(ids, lp, student, mask)
    for bi in range(b):
        for ti in range(t):
            for ki in range(k):
                want = bool(mask[bi, ti]) and int(ids[bi, ti, ki]) in student[bi, ti].tolist()
                assert bool(batch.support_mask_BTK[bi, ti, ki]) == want


def test_support_batch_refuses_inconsistent_inputs() -> None:
    ids = torch.zeros(1, 2, 3, dtype=torch.long)
    lp = torch.zeros(1, 2, 3)
    slot = torch.ones(1, 2, 3, dtype=torch.bool)
    mask = torch.ones(1, 2, dtype=torch.bool)
    SupportBatch(ids, lp, slot, mask)
    with pytest.raises(ValueError, match="teacher_logprobs_BTK"):
        SupportBatch(ids, lp[..., :2], slot, mask)
    with pytest.raises(ValueError, match="mask_BT"):
        SupportBatch(ids, lp, slot, mask[:, :1])
    with pytest.raises(ValueError, match="support_mask_BTK must be bool"):
        SupportBatch(ids, lp, slot.float(), mask)
    with pytest.raises(ValueError, match="support_ids_BTK must be integer"):
        SupportBatch(lp, lp, slot, mask)
    with pytest.raises(ValueError, match=r"\[B, T, K\]"):
        SupportBatch(ids[0], lp[0], slot[0], mask)


def test_student_entropy_chunked_from_hidden_states_matches_the_loop(gen: torch.Generator) -> None:
    hidden = torch.randn(2, 7, 5, generator=gen, dtype=torch.float64)
    lm_head = torch.randn(23, 5, generator=gen, dtype=torch.float64)
    expected = ref_entropy(hidden @ lm_head.T)
    torch.testing.assert_close(
        student_entropy(hidden, lm_head, chunk_size=3), expected, rtol=1e-10, atol=1e-10
    )
    torch.testing.assert_close(
        entropy_from_logits(hidden @ lm_head.T), expected, rtol=1e-10, atol=1e-10
    )


def test_entropy_filter_keeps_the_top_fraction_of_unmasked_positions(gen: torch.Generator) -> None:
    entropy = torch.rand(3, 8, generator=gen)
    mask = torch.rand(3, 8, generator=gen) < 0.75
    keep = entropy_top_fraction_mask(entropy, mask, 0.3)
    live = [(float(entropy[b, t]), b, t) for b in range(3) for t in range(8) if bool(mask[b, t])]
    n_keep = math.ceil(0.3 * len(live))
    expected = {(b, t) for _, b, t in sorted(live, reverse=True)[:n_keep]}
    assert {(b, t) for b in range(3) for t in range(8) if bool(keep[b, t])} == expected
    assert bool((entropy_top_fraction_mask(entropy, mask, 1.0) == mask).all())
    assert not bool(entropy_top_fraction_mask(entropy, torch.zeros_like(mask), 0.5).any())
    with pytest.raises(ValueError, match="fraction"):
        entropy_top_fraction_mask(entropy, mask, 0.0)


def test_filter_by_entropy_narrows_only_the_position_mask(gen: torch.Generator) -> None:
    ids = torch.randint(0, 9, (1, 4, 2), generator=gen)
    batch = teacher_topk_support(ids, torch.zeros(1, 4, 2), torch.ones(1, 4, dtype=torch.bool))
    filtered = filter_by_entropy(batch, torch.tensor([[0.1, 0.9, 0.5, 0.2]]), 0.5)
    assert filtered.mask_BT.tolist() == [[False, True, True, False]]
    assert filtered.support_ids_BTK is batch.support_ids_BTK
