"""Property tests (hypothesis) over random shapes, masks and supports.

Small `max_examples` and no deadline: the suite shares a 2-core machine.
"""

from __future__ import annotations

import dataclasses

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_losses_reference import random_batch, ref_truncated_rkl

from opd_client.losses import support_logits, truncated_rkl

shapes = st.tuples(
    st.integers(1, 3),  # B
    st.integers(1, 6),  # T
    st.integers(1, 6),  # K
    st.integers(0, 2**31 - 1),  # seed
    st.floats(0.0, 1.0),  # slot keep probability
    st.floats(0.0, 1.0),  # position keep probability
)


@settings(max_examples=30, deadline=None)
@given(shapes)
def test_lsm_matches_reference_is_nonnegative_and_has_finite_gradients(args) -> None:
    b, t, k, seed, p_slot, p_pos = args
    gen = torch.Generator().manual_seed(seed)
    z, batch = random_batch(gen, b=b, t=t, k=k, v=k + 3, p_slot=p_slot, p_pos=p_pos)
    z = z.requires_grad_(True)
    loss = truncated_rkl(z, batch)
    (grad,) = torch.autograd.grad(loss, z)
    ref = ref_truncated_rkl(z, batch.teacher_logprobs_BTK, batch.support_mask_BTK, batch.mask_BT)
    torch.testing.assert_close(loss.detach(), ref.detach(), rtol=1e-10, atol=1e-10)
    assert float(loss.detach()) >= -1e-12
    assert torch.isfinite(grad).all()
    live = batch.support_mask_BTK & batch.mask_BT.unsqueeze(-1)
    assert bool((grad[~live] == 0).all())
    # Per position the LSM gradient sums to zero over the support (shift invariance).
    torch.testing.assert_close(grad.sum(-1), torch.zeros_like(grad.sum(-1)), rtol=0, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(shapes)
def test_lsm_is_invariant_to_per_position_shifts_of_either_side(args) -> None:
    b, t, k, seed, p_slot, p_pos = args
    gen = torch.Generator().manual_seed(seed)
    z, batch = random_batch(gen, b=b, t=t, k=k, v=k + 3, p_slot=p_slot, p_pos=p_pos)
    shift = torch.randn(b, t, 1, generator=gen, dtype=torch.float64) * 10
    shifted = dataclasses.replace(batch, teacher_logprobs_BTK=batch.teacher_logprobs_BTK - shift)
    torch.testing.assert_close(
        truncated_rkl(z + shift, shifted), truncated_rkl(z, batch), rtol=1e-10, atol=1e-10
    )


@settings(max_examples=15, deadline=None)
@given(
    st.integers(1, 2),
    st.integers(1, 9),
    st.integers(1, 5),
    st.integers(1, 8),
    st.integers(1, 10),
    st.integers(0, 2**31 - 1),
)
def test_fused_logits_equal_gathered_logits_for_any_chunking(b, t, k, d, chunk, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    v = 17
    hidden = torch.randn(b, t, d, generator=gen, dtype=torch.float64, requires_grad=True)
    lm_head = torch.randn(v, d, generator=gen, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, v, (b, t, k), generator=gen)
    weight = torch.randn(b, t, k, generator=gen, dtype=torch.float64)
    fused = (support_logits(hidden, lm_head, ids, chunk) * weight).sum()
    naive = ((hidden @ lm_head.T).gather(-1, ids) * weight).sum()
    g_fused = torch.autograd.grad(fused, (hidden, lm_head))
    g_naive = torch.autograd.grad(naive, (hidden, lm_head))
    torch.testing.assert_close(fused, naive, rtol=1e-12, atol=1e-12)
    for got, want in zip(g_fused, g_naive, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
