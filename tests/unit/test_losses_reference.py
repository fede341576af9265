"""Slow, obvious float64 references for `opd_client.losses`, and tests that pin them.

Why this module exists: every loss in the library is vectorised and masked with
`torch.where`; these references are written the other way, one position and one slot at a
time, so that the two can only agree when both are right. The other `test_losses_*`
modules import them; the tests here check the references themselves against numbers
worked out by hand.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from opd_client.losses import SupportBatch


def _positions(mask_BT: Tensor) -> list[tuple[int, int]]:
    b_size, t_size = mask_BT.shape
    return [(b, t) for b in range(b_size) for t in range(t_size) if bool(mask_BT[b, t])]


def _mean(terms: list[Tensor]) -> Tensor:
    if not terms:
        return torch.zeros((), dtype=torch.float64)
    return torch.stack(terms).sum() / len(terms)


def ref_truncated_rkl(
    z_BTK: Tensor,
    teacher_BTK: Tensor,
    slot_BTK: Tensor,
    mask_BT: Tensor,
    logz_BT: Tensor | None = None,
) -> Tensor:
    """LSM when `logz_BT` is None, else the unnormalised truncated RKL; loops over positions."""
    terms = []
    for b, t in _positions(mask_BT):
        slots = [k for k in range(z_BTK.shape[-1]) if bool(slot_BTK[b, t, k])]
        if not slots:
            terms.append(torch.zeros((), dtype=torch.float64))
            continue
        z = torch.stack([z_BTK[b, t, k] for k in slots])
        lq = torch.stack([teacher_BTK[b, t, k] for k in slots]).detach()
        if logz_BT is None:
            logp = z - torch.logsumexp(z, 0)
            lq = lq - torch.logsumexp(lq, 0)
        else:
            logp = z - logz_BT[b, t]
        term = torch.zeros((), dtype=torch.float64)
        for j in range(len(slots)):
            term = term + logp[j].exp() * (logp[j] - lq[j])
        terms.append(term)
    return _mean(terms)


def ref_mass(z_BTK: Tensor, slot_BTK: Tensor, mask_BT: Tensor, logz_BT: Tensor) -> Tensor:
    """Token-mean of the student's probability mass on S_t, Σ_{v∈S_t} π(v)."""
    terms = []
    for b, t in _positions(mask_BT):
        term = torch.zeros((), dtype=torch.float64)
        for k in range(z_BTK.shape[-1]):
            if bool(slot_BTK[b, t, k]):
                term = term + (z_BTK[b, t, k] - logz_BT[b, t]).exp()
        terms.append(term)
    return _mean(terms)


def ref_kl_rows(logits_p_BTV: Tensor, logits_r_BTV: Tensor, mask_BT: Tensor) -> Tensor:
    """Token-mean of KL(softmax(p) ‖ softmax(r)) over unmasked positions."""
    terms = []
    for b, t in _positions(mask_BT):
        logp = torch.log_softmax(logits_p_BTV[b, t], 0)
        logr = torch.log_softmax(logits_r_BTV[b, t], 0)
        terms.append(sum(logp[v].exp() * (logp[v] - logr[v]) for v in range(logp.shape[0])))
    return _mean(terms)  # type: ignore[arg-type]


def ref_jsd(student_BTV: Tensor, teacher_BTV: Tensor, mask_BT: Tensor, beta: float) -> Tensor:
    """β KL(q ‖ M) + (1 − β) KL(π ‖ M), M = (1 − β) π + β q, per position."""
    terms = []
    for b, t in _positions(mask_BT):
        p = torch.softmax(student_BTV[b, t], 0)
        q = torch.softmax(teacher_BTV[b, t].detach(), 0)
        m = (1 - beta) * p + beta * q
        kl_q = sum(q[v] * (q[v].log() - m[v].log()) for v in range(p.shape[0]))
        kl_p = sum(p[v] * (p[v].log() - m[v].log()) for v in range(p.shape[0]))
        terms.append(beta * kl_q + (1 - beta) * kl_p)
    return _mean(terms)  # type: ignore[arg-type]


def ref_sampled_token_opd(
    new_BT: Tensor, old_BT: Tensor, teacher_BT: Tensor, mask_BT: Tensor, gamma: float, clip: float
) -> Tensor:
    terms = []
    t_size = mask_BT.shape[1]
    for b, t in _positions(mask_BT):
        advantage = 0.0
        for u in range(t, t_size):
            if bool(mask_BT[b, u]):
                reward = float(teacher_BT[b, u]) - float(old_BT[b, u])
                advantage += gamma ** (u - t) * reward
        ratio = (new_BT[b, t] - float(old_BT[b, t])).exp()
        clipped = ratio.clamp(1 - clip, 1 + clip)
        terms.append(-torch.minimum(ratio * advantage, clipped * advantage))
    return _mean(terms)


def ref_entropy(logits_BTV: Tensor) -> Tensor:
    out = torch.zeros(logits_BTV.shape[:2], dtype=torch.float64)
    for b in range(logits_BTV.shape[0]):
        for t in range(logits_BTV.shape[1]):
            p = torch.softmax(logits_BTV[b, t].double(), 0)
            out[b, t] = -sum(float(p[v]) * math.log(float(p[v])) for v in range(p.shape[0]))
    return out


def random_batch(
    gen: torch.Generator,
    b: int = 2,
    t: int = 5,
    k: int = 4,
    v: int = 11,
    p_slot: float = 0.75,
    p_pos: float = 0.75,
) -> tuple[Tensor, SupportBatch]:
    """Float64 student logits on a random support and a batch whose masked slots hold the
    poison a real batch may hold: −58, −inf and NaN teacher log-probs."""
    ids = torch.stack([torch.randperm(v, generator=gen)[:k] for _ in range(b * t)]).view(b, t, k)
    z = torch.randn(b, t, k, generator=gen, dtype=torch.float64) * 2
    teacher = torch.log_softmax(torch.randn(b, t, v, generator=gen, dtype=torch.float64), -1)
    teacher_on_s = teacher.gather(-1, ids)
    slot = torch.rand(b, t, k, generator=gen) < p_slot
    mask = torch.rand(b, t, generator=gen) < p_pos
    poison = torch.tensor([-58.0, float("-inf"), float("nan")], dtype=torch.float64)
    filler = poison[torch.randint(0, 3, (b, t, k), generator=gen)]
    teacher_on_s = torch.where(slot, teacher_on_s, filler)
    return z, SupportBatch(ids, teacher_on_s, slot, mask)


# --- the references against numbers worked out by hand -------------------------------


def _one(values: list[float]) -> Tensor:
    return torch.tensor(values, dtype=torch.float64).view(1, 1, -1)


def test_ref_lsm_matches_hand_computed_two_slot_case() -> None:
    # π̂ = (1/4, 3/4) from z = (0, log 3); q̂ = (1/2, 1/2) from equal log-probs.
    z = _one([0.0, math.log(3.0)])
    teacher = _one([-2.0, -2.0])
    slots = torch.ones(1, 1, 2, dtype=torch.bool)
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    got = ref_truncated_rkl(z, teacher, slots, torch.ones(1, 1, dtype=torch.bool))
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))


def test_ref_unnormalised_and_mass_match_hand_computed_case() -> None:
    # π on S = (0.1, 0.2) (the rest of the vocabulary holds 0.7); q on S = (0.2, 0.2).
    logz = torch.zeros(1, 1, dtype=torch.float64)
    z = _one([math.log(0.1), math.log(0.2)])
    teacher = _one([math.log(0.2), math.log(0.2)])
    slots = torch.ones(1, 1, 2, dtype=torch.bool)
    mask = torch.ones(1, 1, dtype=torch.bool)
    expected = 0.1 * math.log(0.1 / 0.2) + 0.2 * math.log(0.2 / 0.2)
    got = ref_truncated_rkl(z, teacher, slots, mask, logz)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(
        ref_mass(z, slots, mask, logz), torch.tensor(0.3, dtype=torch.float64)
    )


def test_ref_sampled_token_opd_matches_hand_computed_case() -> None:
    # Two tokens, rewards r = (−1, 2); γ = 0.5 → A = (−1 + 0.5·2, 2) = (0, 2); ρ = 1.
    old = torch.tensor([[-1.0, -1.0]], dtype=torch.float64)
    teacher = torch.tensor([[-2.0, 1.0]], dtype=torch.float64)
    mask = torch.ones(1, 2, dtype=torch.bool)
    got = ref_sampled_token_opd(old.clone(), old, teacher, mask, gamma=0.5, clip=0.2)
    torch.testing.assert_close(got, torch.tensor(-(0.0 + 2.0) / 2, dtype=torch.float64))


def test_ref_entropy_of_uniform_is_log_v() -> None:
    got = ref_entropy(torch.zeros(1, 2, 7, dtype=torch.float64))
    torch.testing.assert_close(got, torch.full((1, 2), math.log(7.0), dtype=torch.float64))
