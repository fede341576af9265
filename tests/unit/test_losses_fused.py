"""The fused support path equals the naive path: loss, h.grad and W.grad.

`support_logits` and `student_logz` are custom autograd functions with chunked forward
and backward passes, so they are checked against `h @ W.T` (fp32, V ≥ 50,000, chunk sizes
that do not divide the positions) and by `gradcheck` in float64.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from opd_client.losses import (
    SupportBatch,
    student_logz,
    support_logits,
    teacher_topk_support,
    truncated_rkl,
)

V_LARGE, D_SMALL = 50_257, 16
FP32 = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(99)


def _problem(
    gen: torch.Generator, b: int, t: int, k: int, v: int, d: int
) -> tuple[Tensor, Tensor, SupportBatch]:
    hidden = torch.randn(b, t, d, generator=gen)
    lm_head = torch.randn(v, d, generator=gen) * 0.3
    ids = torch.stack([torch.randperm(v, generator=gen)[:k] for _ in range(b * t)]).view(b, t, k)
    ids[..., -1] = ids[..., 0]  # a duplicate id, masked below
    teacher = torch.log_softmax(torch.randn(b, t, k, generator=gen), -1)
    teacher[..., -1] = float("-inf")  # the duplicate slot is masked by its −inf log-prob
    ids[0, 0, 1] = -1  # an unmapped teacher token
    mask = torch.rand(b, t, generator=gen) < 0.8
    return hidden, lm_head, teacher_topk_support(ids, teacher, mask)


def _grads(loss: Tensor, *leaves: Tensor) -> tuple[Tensor, ...]:
    return torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("chunk_size", [7, 128])
def test_fused_lsm_equals_naive_lsm_in_loss_and_both_gradients(
    gen: torch.Generator, chunk_size: int
) -> None:
    hidden, lm_head, batch = _problem(gen, b=2, t=19, k=8, v=V_LARGE, d=D_SMALL)
    h1, w1 = hidden.clone().requires_grad_(True), lm_head.clone().requires_grad_(True)
    naive_z = torch.log_softmax(h1 @ w1.T, -1).gather(-1, batch.support_ids_BTK)
    naive = truncated_rkl(naive_z, batch)
    gh1, gw1 = _grads(naive, h1, w1)
    h2, w2 = hidden.clone().requires_grad_(True), lm_head.clone().requires_grad_(True)
    fused = truncated_rkl(support_logits(h2, w2, batch.support_ids_BTK, chunk_size), batch)
    gh2, gw2 = _grads(fused, h2, w2)
    torch.testing.assert_close(fused, naive, **FP32)
    torch.testing.assert_close(gh2, gh1, **FP32)
    torch.testing.assert_close(gw2, gw1, **FP32)
    assert naive > 0 and gw1.abs().max() > 0


def test_fused_unnormalised_with_chunked_logz_equals_naive(gen: torch.Generator) -> None:
    hidden, lm_head, batch = _problem(gen, b=1, t=13, k=6, v=V_LARGE, d=D_SMALL)
    h1, w1 = hidden.clone().requires_grad_(True), lm_head.clone().requires_grad_(True)
    logits = h1 @ w1.T
    naive = truncated_rkl(
        logits.gather(-1, batch.support_ids_BTK), batch, False, torch.logsumexp(logits, -1)
    )
    gh1, gw1 = _grads(naive, h1, w1)
    h2, w2 = hidden.clone().requires_grad_(True), lm_head.clone().requires_grad_(True)
    z = support_logits(h2, w2, batch.support_ids_BTK, chunk_size=5)
    fused = truncated_rkl(z, batch, False, student_logz(h2, w2, chunk_size=4))
    gh2, gw2 = _grads(fused, h2, w2)
    torch.testing.assert_close(fused, naive, **FP32)
    torch.testing.assert_close(gh2, gh1, **FP32)
    torch.testing.assert_close(gw2, gw1, **FP32)


def test_support_logits_and_logz_pass_gradcheck_in_float64(gen: torch.Generator) -> None:
    hidden = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64).requires_grad_(True)
    lm_head = torch.randn(11, 4, generator=gen, dtype=torch.float64).requires_grad_(True)
    # Repeated ids within and across positions exercise index_add_'s accumulation.
    ids = torch.randint(0, 11, (2, 3, 5), generator=gen)
    ids[0, 0, :2] = 3
    assert torch.autograd.gradcheck(lambda h, w: support_logits(h, w, ids, 2), (hidden, lm_head))
    assert torch.autograd.gradcheck(lambda h, w: student_logz(h, w, 4), (hidden, lm_head))


def test_support_logits_value_is_the_gathered_matmul_in_float64(gen: torch.Generator) -> None:
    hidden = torch.randn(2, 5, 8, generator=gen, dtype=torch.float64)
    lm_head = torch.randn(40, 8, generator=gen, dtype=torch.float64)
    ids = torch.randint(0, 40, (2, 5, 3), generator=gen)
    got = support_logits(hidden, lm_head, ids, chunk_size=3)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, (hidden @ lm_head.T).gather(-1, ids), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        student_logz(hidden, lm_head, 3),
        torch.logsumexp(hidden @ lm_head.T, -1),
        rtol=1e-12,
        atol=1e-12,
    )


def test_frozen_lm_head_gets_no_gradient_and_bf16_is_upcast(gen: torch.Generator) -> None:
    hidden = torch.randn(1, 6, 8, generator=gen).bfloat16().requires_grad_(True)
    lm_head = torch.randn(30, 8, generator=gen).bfloat16()
    ids = torch.randint(0, 30, (1, 6, 4), generator=gen)
    z = support_logits(hidden, lm_head, ids)
    assert z.dtype == torch.float32
    z.sum().backward()
    assert lm_head.grad is None
    assert hidden.grad is not None and hidden.grad.dtype == torch.bfloat16
    torch.testing.assert_close(
        hidden.grad.float(), lm_head.float()[ids].sum(-2), rtol=1e-2, atol=1e-2
    )


def test_bad_shapes_and_chunk_sizes_are_refused() -> None:
    hidden, lm_head = torch.zeros(1, 4, 8), torch.zeros(10, 8)
    with pytest.raises(ValueError, match="chunk_size"):
        support_logits(hidden, lm_head, torch.zeros(1, 4, 2, dtype=torch.long), chunk_size=0)
    with pytest.raises(ValueError, match="hidden size"):
        support_logits(hidden, torch.zeros(10, 7), torch.zeros(1, 4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="support_ids_BTK"):
        support_logits(hidden, lm_head, torch.zeros(1, 3, 2, dtype=torch.long))
