"""Sampled-token OPD, the discounted return, full reverse KL and generalised JSD.

Each is compared with the float64 loops in `test_losses_reference` to 1e-10.
"""

from __future__ import annotations

import pytest
import torch
from test_losses_reference import ref_jsd, ref_kl_rows, ref_sampled_token_opd

from opd_client.losses import discounted_returns, full_rkl, generalized_jsd, sampled_token_opd

TIGHT = {"rtol": 1e-10, "atol": 1e-10}


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(2026)


def _sampled_inputs(gen: torch.Generator, b: int = 3, t: int = 7):
    old = -torch.rand(b, t, generator=gen, dtype=torch.float64) * 3
    new = (
        old + torch.randn(b, t, generator=gen, dtype=torch.float64) * 0.3
    )  # ratios both sides of the clip
    teacher = -torch.rand(b, t, generator=gen, dtype=torch.float64) * 3
    mask = torch.rand(b, t, generator=gen) < 0.75
    poison = torch.tensor([-58.0, float("-inf"), float("nan")], dtype=torch.float64)
    teacher = torch.where(mask, teacher, poison[torch.arange(b * t).view(b, t) % 3])
    return new, old, teacher, mask


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
def test_sampled_token_opd_matches_reference(gen: torch.Generator, gamma: float) -> None:
    new, old, teacher, mask = _sampled_inputs(gen)
    new = new.requires_grad_(True)
    loss = sampled_token_opd(new, old, teacher, mask, gamma=gamma, clip=0.2)
    (grad,) = torch.autograd.grad(loss, new)
    ref = ref_sampled_token_opd(new, old, teacher, mask, gamma, 0.2)
    (ref_grad,) = torch.autograd.grad(ref, new)
    torch.testing.assert_close(loss, ref, **TIGHT)
    torch.testing.assert_close(grad, ref_grad, **TIGHT)
    assert torch.isfinite(grad).all() and bool((grad[~mask] == 0).all())


def test_sampled_token_opd_at_ratio_one_is_the_reward_weighted_score(gen: torch.Generator) -> None:
    _, old, teacher, mask = _sampled_inputs(gen)
    new = old.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(sampled_token_opd(new, old, teacher, mask), new)
    reward = torch.where(mask, teacher - old, 0.0)
    torch.testing.assert_close(grad, -reward / mask.sum(), **TIGHT)


def test_discounted_returns_match_the_loop(gen: torch.Generator) -> None:
    reward = torch.randn(2, 6, generator=gen, dtype=torch.float64)
    mask = torch.rand(2, 6, generator=gen) < 0.7
    for gamma in (0.0, 0.3, 1.0):
        expected = torch.zeros(2, 6, dtype=torch.float64)
        for b in range(2):
            for t in range(6):
                expected[b, t] = sum(
                    gamma ** (u - t) * float(reward[b, u]) for u in range(t, 6) if bool(mask[b, u])
                )
        torch.testing.assert_close(discounted_returns(reward, mask, gamma), expected, **TIGHT)
    with pytest.raises(ValueError, match="gamma"):
        discounted_returns(reward, mask, 1.5)


def test_full_rkl_matches_reference_and_is_zero_for_identical(gen: torch.Generator) -> None:
    student = torch.randn(2, 4, 9, generator=gen, dtype=torch.float64).requires_grad_(True)
    teacher = torch.randn(2, 4, 9, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[True, False, True, True], [True, True, False, False]])
    torch.testing.assert_close(
        full_rkl(student, teacher, mask), ref_kl_rows(student, teacher, mask), **TIGHT
    )
    same = full_rkl(student, student.detach() + 3.0, mask)
    (grad,) = torch.autograd.grad(same, student)
    torch.testing.assert_close(same, torch.zeros((), dtype=torch.float64), **TIGHT)
    torch.testing.assert_close(grad, torch.zeros_like(grad), **TIGHT)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_generalized_jsd_matches_reference(gen: torch.Generator, beta: float) -> None:
    student = torch.randn(2, 3, 7, generator=gen, dtype=torch.float64).requires_grad_(True)
    teacher = torch.randn(2, 3, 7, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [False, True, True]])
    loss = generalized_jsd(student, teacher, mask, beta)
    ref = ref_jsd(student, teacher, mask, beta)
    torch.testing.assert_close(loss, ref, **TIGHT)
    torch.testing.assert_close(
        torch.autograd.grad(loss, student)[0], torch.autograd.grad(ref, student)[0], **TIGHT
    )
    assert 0 < float(loss.detach()) <= 0.6931471805599453  # JSD_β ≤ log 2


def test_generalized_jsd_endpoints_are_the_plain_kls(gen: torch.Generator) -> None:
    student = torch.randn(2, 3, 7, generator=gen, dtype=torch.float64)
    teacher = torch.randn(2, 3, 7, generator=gen, dtype=torch.float64)
    mask = torch.ones(2, 3, dtype=torch.bool)
    torch.testing.assert_close(
        generalized_jsd(student, teacher, mask, 0.0), ref_kl_rows(teacher, student, mask), **TIGHT
    )
    torch.testing.assert_close(
        generalized_jsd(student, teacher, mask, 1.0), ref_kl_rows(student, teacher, mask), **TIGHT
    )
    torch.testing.assert_close(
        generalized_jsd(student, student + 1.0, mask, 0.5),
        torch.zeros((), dtype=torch.float64),
        **TIGHT,
    )
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(student, teacher, mask, 1.5)
