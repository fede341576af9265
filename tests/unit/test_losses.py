"""Truncated reverse KL (LSM, unnormalised, stop-gradient) against the slow references.

The test list every loss gets (STYLE.md habit 9): identical inputs give 0, all-masked
gives 0 without NaN, the family's endpoint equals the plain KL (K = V), masked slots change
nothing, the gradient is checked numerically, and the value and gradient match a float64
loop to 1e-10.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch
from test_losses_reference import random_batch, ref_mass, ref_truncated_rkl
from torch import Tensor

from opd_client.losses import (
    SupportBatch,
    full_rkl,
    generalized_jsd,
    sampled_token_opd,
    stopgrad_truncated_rkl,
    truncated_rkl,
    truncated_rkl_per_position,
)

TIGHT = {"rtol": 1e-10, "atol": 1e-10}


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def _grad(loss_fn: Callable[[Tensor], Tensor], z: Tensor) -> tuple[Tensor, Tensor]:
    z = z.detach().clone().requires_grad_(True)
    loss = loss_fn(z)
    (grad,) = torch.autograd.grad(loss, z)
    return loss.detach(), grad


def _logz_for(z: Tensor, gen: torch.Generator) -> Tensor:
    """A log-normaliser consistent with z on S: log Z ≥ logsumexp over S plus extra mass."""
    extra = torch.randn(z.shape[:2], generator=gen, dtype=torch.float64).exp()
    return torch.logaddexp(torch.logsumexp(z, -1), extra)


def test_lsm_matches_reference_in_value_and_gradient(gen: torch.Generator) -> None:
    z, batch = random_batch(gen, b=3, t=6, k=5, v=13)
    loss, grad = _grad(lambda z_: truncated_rkl(z_, batch), z)
    ref_loss, ref_grad = _grad(
        lambda z_: ref_truncated_rkl(
            z_, batch.teacher_logprobs_BTK, batch.support_mask_BTK, batch.mask_BT
        ),
        z,
    )
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, ref_loss, **TIGHT)
    torch.testing.assert_close(grad, ref_grad, **TIGHT)
    assert loss > 0


def test_per_position_lsm_matches_the_reference_position_by_position(
    gen: torch.Generator,
) -> None:
    z, batch = random_batch(gen, b=3, t=6, k=5, v=13)
    loss_BT = truncated_rkl_per_position(z, batch)
    assert loss_BT.shape == batch.mask_BT.shape
    assert not loss_BT[~batch.mask_BT].any()  # masked positions hold 0, not poison
    for b in range(3):
        for t in range(6):
            if batch.mask_BT[b, t]:
                one = torch.zeros_like(batch.mask_BT)
                one[b, t] = True
                ref = ref_truncated_rkl(z, batch.teacher_logprobs_BTK, batch.support_mask_BTK, one)
                torch.testing.assert_close(loss_BT[b, t], ref, **TIGHT)
    torch.testing.assert_close(
        loss_BT.sum() / batch.mask_BT.sum(), truncated_rkl(z, batch), **TIGHT
    )


def test_lsm_of_identical_student_and_teacher_is_zero_with_zero_gradient(
    gen: torch.Generator,
) -> None:
    z, batch = random_batch(gen)
    # The teacher's log-probs are the student's logits up to a per-position shift.
    shift = torch.randn(z.shape[:2], generator=gen, dtype=torch.float64).unsqueeze(-1)
    same = dataclasses.replace(
        batch, teacher_logprobs_BTK=torch.where(batch.support_mask_BTK, z + shift, -58.0)
    )
    loss, grad = _grad(lambda z_: truncated_rkl(z_, same), z)
    torch.testing.assert_close(loss, torch.zeros((), dtype=torch.float64), **TIGHT)
    torch.testing.assert_close(grad, torch.zeros_like(grad), **TIGHT)


def test_lsm_with_k_equal_v_is_the_full_reverse_kl(gen: torch.Generator) -> None:
    b, t, v = 2, 4, 9
    student = torch.randn(b, t, v, generator=gen, dtype=torch.float64)
    teacher = torch.randn(b, t, v, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[True, True, False, True], [False, True, True, True]])
    ids = torch.stack([torch.randperm(v, generator=gen) for _ in range(b * t)]).view(b, t, v)
    batch = SupportBatch(
        ids,
        torch.log_softmax(teacher, -1).gather(-1, ids),
        torch.ones(b, t, v, dtype=torch.bool),
        mask,
    )
    lsm, lsm_grad = _grad(lambda s: truncated_rkl(s.gather(-1, ids), batch), student)
    full, full_grad = _grad(lambda s: full_rkl(s, teacher, mask), student)
    torch.testing.assert_close(lsm, full, **TIGHT)
    torch.testing.assert_close(lsm_grad, full_grad, **TIGHT)
    # And generalised JSD at β = 1 is the same reverse KL.
    torch.testing.assert_close(generalized_jsd(student, teacher, mask, beta=1.0), full, **TIGHT)


def test_lsm_gradient_passes_gradcheck(gen: torch.Generator) -> None:
    z, batch = random_batch(gen, b=2, t=3, k=4, v=9)
    assert torch.autograd.gradcheck(
        lambda z_: truncated_rkl(z_, batch), (z.requires_grad_(True),), eps=1e-6, atol=1e-8
    )


def test_unnormalised_form_matches_reference(gen: torch.Generator) -> None:
    z, batch = random_batch(gen, b=2, t=6, k=4, v=13)
    logz = _logz_for(z, gen)
    loss, grad = _grad(
        lambda z_: truncated_rkl(z_, batch, renormalize=False, student_logz_BT=logz), z
    )
    ref_loss, ref_grad = _grad(
        lambda z_: ref_truncated_rkl(
            z_, batch.teacher_logprobs_BTK, batch.support_mask_BTK, batch.mask_BT, logz
        ),
        z,
    )
    torch.testing.assert_close(loss, ref_loss, **TIGHT)
    torch.testing.assert_close(grad, ref_grad, **TIGHT)


def test_unnormalised_gradient_carries_the_mass_term(gen: torch.Generator) -> None:
    """DESIGN.md §1: ∇L_unnorm = Σ_S π ∇log π (log π − log q) + ∇Σ_S π.

    The first term is the stop-gradient form's gradient, the second the gradient of the
    support's mass, which descent follows off the support (the collapse).
    """
    z, batch = random_batch(gen, b=2, t=6, k=4, v=13)
    logz = _logz_for(z, gen)
    _, g_unnorm = _grad(lambda z_: truncated_rkl(z_, batch, False, logz), z)
    _, g_stop = _grad(lambda z_: stopgrad_truncated_rkl(z_, batch, False, logz), z)
    _, g_mass = _grad(lambda z_: ref_mass(z_, batch.support_mask_BTK, batch.mask_BT, logz), z)
    torch.testing.assert_close(g_unnorm, g_stop + g_mass, **TIGHT)
    # The term is real: the two forms' gradients differ by a non-zero amount, and with
    # logz held fixed it raises every unmasked logit (descent lowers them all).
    assert g_mass.abs().max() > 1e-3
    live = batch.support_mask_BTK & batch.mask_BT.unsqueeze(-1)
    assert bool((g_mass[live] > 0).all())
    # Renormalising removes it: the LSM gradient equals the stop-gradient LSM gradient.
    _, g_lsm = _grad(lambda z_: truncated_rkl(z_, batch), z)
    _, g_lsm_stop = _grad(lambda z_: stopgrad_truncated_rkl(z_, batch, renormalize=True), z)
    torch.testing.assert_close(g_lsm, g_lsm_stop, **TIGHT)


def test_unnormalised_identical_distributions_give_zero_loss_but_a_push_off_the_support(
    gen: torch.Generator,
) -> None:
    z, batch = random_batch(gen)
    logz = _logz_for(z, gen)
    same = dataclasses.replace(batch, teacher_logprobs_BTK=z - logz.unsqueeze(-1))
    loss, grad = _grad(lambda z_: truncated_rkl(z_, same, False, logz), z)
    _, g_mass = _grad(lambda z_: ref_mass(z_, same.support_mask_BTK, same.mask_BT, logz), z)
    torch.testing.assert_close(loss, torch.zeros((), dtype=torch.float64), **TIGHT)
    torch.testing.assert_close(grad, g_mass, **TIGHT)


def test_stopgrad_value_equals_the_unnormalised_value(gen: torch.Generator) -> None:
    z, batch = random_batch(gen)
    logz = _logz_for(z, gen)
    torch.testing.assert_close(
        stopgrad_truncated_rkl(z, batch, False, logz), truncated_rkl(z, batch, False, logz), **TIGHT
    )


@pytest.mark.parametrize("renormalize", [True, False])
def test_masked_slots_and_positions_change_nothing(gen: torch.Generator, renormalize: bool) -> None:
    z, batch = random_batch(gen, b=2, t=6, k=5, v=13)
    logz = _logz_for(z, gen)
    live = batch.support_mask_BTK & batch.mask_BT.unsqueeze(-1)
    z_other = torch.where(live, z, torch.randn(z.shape, generator=gen, dtype=torch.float64) * 50)
    teacher_other = torch.where(live, batch.teacher_logprobs_BTK, float("nan"))
    other = dataclasses.replace(
        batch,
        teacher_logprobs_BTK=teacher_other,
        support_ids_BTK=torch.where(live, batch.support_ids_BTK, 7),
    )
    logz_other = torch.where(batch.mask_BT, logz, float("-inf"))
    loss, grad = _grad(lambda z_: truncated_rkl(z_, batch, renormalize, logz), z)
    loss_o, grad_o = _grad(lambda z_: truncated_rkl(z_, other, renormalize, logz_other), z_other)
    torch.testing.assert_close(loss, loss_o, **TIGHT)
    torch.testing.assert_close(grad, grad_o, **TIGHT)
    assert bool((grad[~live] == 0).all())


def _all_masked_losses() -> dict[str, Callable[[Tensor, SupportBatch], Tensor]]:
    logz = torch.zeros(2, 5, dtype=torch.float64)
    return {
        "lsm": lambda z, b: truncated_rkl(z, b),
        "unnormalised": lambda z, b: truncated_rkl(z, b, False, logz),
        "stopgrad": lambda z, b: stopgrad_truncated_rkl(z, b, False, logz),
        "stopgrad_lsm": lambda z, b: stopgrad_truncated_rkl(z, b, True),
        "sampled": lambda z, b: sampled_token_opd(
            z[..., 0], z[..., 1].detach(), b.teacher_logprobs_BTK[..., 0], b.mask_BT
        ),
        "sampled_gamma": lambda z, b: sampled_token_opd(
            z[..., 0], z[..., 1].detach(), b.teacher_logprobs_BTK[..., 0], b.mask_BT, gamma=0.9
        ),
        "full_rkl": lambda z, b: full_rkl(z, b.teacher_logprobs_BTK, b.mask_BT),
        "jsd": lambda z, b: generalized_jsd(z, b.teacher_logprobs_BTK, b.mask_BT, 0.5),
    }


@pytest.mark.parametrize("name", sorted(_all_masked_losses()))
@pytest.mark.parametrize("which", ["positions", "slots"])
def test_all_masked_gives_zero_loss_and_zero_gradient(
    gen: torch.Generator, name: str, which: str
) -> None:
    z, batch = random_batch(gen, b=2, t=5, k=4, v=11)
    poison = torch.tensor([-58.0, float("-inf"), float("nan")], dtype=torch.float64)
    teacher = poison[torch.arange(z.numel()) % 3].view(z.shape)
    if which == "positions":
        masked = dataclasses.replace(
            batch, teacher_logprobs_BTK=teacher, mask_BT=torch.zeros_like(batch.mask_BT)
        )
    else:
        masked = dataclasses.replace(
            batch,
            teacher_logprobs_BTK=teacher,
            support_mask_BTK=torch.zeros_like(batch.support_mask_BTK),
            mask_BT=torch.ones_like(batch.mask_BT),
        )
    if which == "slots" and name.startswith(("sampled", "full", "jsd")):
        # These take no slot mask: with every position live, a −inf/NaN teacher is an
        # input error, not a masked one, so this case does not apply to them.
        masked = dataclasses.replace(masked, mask_BT=torch.zeros_like(batch.mask_BT))
    loss, grad = _grad(lambda z_: _all_masked_losses()[name](z_, masked), z)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(loss, torch.zeros((), dtype=torch.float64), rtol=0, atol=0)
    torch.testing.assert_close(grad, torch.zeros_like(grad), rtol=0, atol=0)


def test_teacher_never_gets_a_gradient(gen: torch.Generator) -> None:
    z, batch = random_batch(gen)
    teacher = batch.teacher_logprobs_BTK.clone().requires_grad_(True)
    leaky = dataclasses.replace(batch, teacher_logprobs_BTK=teacher)
    z = z.requires_grad_(True)
    for loss in (truncated_rkl(z, leaky), stopgrad_truncated_rkl(z, leaky, True)):
        loss.backward()
    assert teacher.grad is None
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_low_precision_inputs_are_upcast(gen: torch.Generator) -> None:
    z, batch = random_batch(gen)
    half = dataclasses.replace(batch, teacher_logprobs_BTK=batch.teacher_logprobs_BTK.bfloat16())
    loss = truncated_rkl(z.bfloat16(), half)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), truncated_rkl(z, batch), rtol=5e-2, atol=5e-2)


def test_unnormalised_without_logz_and_wrong_shapes_are_refused(gen: torch.Generator) -> None:
    z, batch = random_batch(gen)
    with pytest.raises(ValueError, match="student_logz_BT"):
        truncated_rkl(z, batch, renormalize=False)
    with pytest.raises(ValueError, match="student_logz_BT"):
        truncated_rkl(z, batch, renormalize=False, student_logz_BT=torch.zeros(3))
    with pytest.raises(ValueError, match="student_logits_BTK"):
        truncated_rkl(z[..., :2], batch)
