"""One optimiser step: student forward to hidden states, the chosen loss, backward, clip.

Why this module exists: this is where a `ScoredBatch` meets the student's parameters.
Student position t of a response predicts y_t from (x, y_<t), so its logits come from the
hidden state one position before y_t: index len(prompt) − 1 + t of the right-padded
sequence prompt + response. With `fused=True` the logits exist only at the support,
z = h·W[S] (`support_logits`), and log Z (when a loss or a metric needs it) is computed
chunked; `fused=False` builds the full [B, T, V] logits and gathers — the naive path the
equality test compares against. Micro-batches are weighted by their share of the step's
unmasked positions, so gradient accumulation equals one big batch (DESIGN.md §1:
normalised by the global token count). Under torchrun the count is the whole world's and
the body runs through DistributedDataParallel (`distributed.py`), whose mean over ranks
the weights undo, so N ranks take the step one process would take with all their rows.

Metrics computed here (no gradient): rkl_support (LSM value on the support), student_mass
(student probability on the teacher's mapped top-K), and, from the student's top-K
recorded at sampling time (same parameters, the step has not run yet), overlap_ratio
(|teacher top-K ∩ student top-K| / K) and teacher_mass (the teacher's probability on
those shared ids: the support's log-probs at slots whose id is in the student's top-K —
a lower bound of the teacher mass on the student's top-K, since teacher tokens outside
the teacher's own top-K are not known).

What it does not know: the teacher, tokenizers, checkpoints.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from opd_client.losses import (
    SupportBatch,
    filter_by_entropy,
    sampled_token_opd,
    stopgrad_truncated_rkl,
    student_entropy,
    student_logz,
    student_topk_support,
    support_logits,
    teacher_student_intersection_support,
    teacher_topk_with_sampled_support,
    truncated_rkl,
    truncated_rkl_per_position,
)
from opd_client.train.config import LossConfig, OptimConfig
from opd_client.train.distributed import HiddenStates, Parallel
from opd_client.train.pipeline import ScoredBatch
from opd_client.train.rollout import RolloutBatch


@dataclass
class StepResult:
    """One step, over the whole job: the (weighted) token-mean loss, the gradient norm
    before clipping, metrics (means over positions, and `positions`), the same per group
    label, and each teacher's own token-mean loss by teacher index."""

    loss: float
    grad_norm: float
    lr: float
    tokens: int
    metrics: dict[str, float]
    groups: dict[str, dict[str, float]] = field(default_factory=dict)
    teacher_losses: dict[int, float] = field(default_factory=dict)


def lr_at(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Learning rate of optimiser step `step` (0-based): linear warmup, then constant or
    cosine to min_lr_ratio · lr at max_steps."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(max_steps - cfg.warmup_steps, 1)
    progress = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    floor = cfg.min_lr_ratio
    return cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def lm_head_weight(model: Any) -> Tensor:
    head = model.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None:
        raise ValueError("the student's LM head must be a bias-free linear layer")
    return head.weight


def _sequences(rollouts: RolloutBatch, rows: list[int], pad_id: int) -> tuple[Tensor, ...]:
    """Right-padded prompt+response ids, attention mask and hidden-state index [B, T]."""
    T = rollouts.response_ids_BT.shape[1]
    seqs = [rollouts.prompt_ids[b] + rollouts.response_ids[b] for b in rows]
    L = max(len(s) for s in seqs)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), L), dtype=torch.long)
    index_BT = torch.zeros((len(rows), T), dtype=torch.long)
    for i, (b, s) in enumerate(zip(rows, seqs, strict=True)):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        attention[i, : len(s)] = 1
        start = len(rollouts.prompt_ids[b]) - 1
        index_BT[i] = torch.clamp(torch.arange(start, start + T), max=L - 1)
    return ids, attention, index_BT


def _take(batch: SupportBatch, rows: list[int]) -> SupportBatch:
    return SupportBatch(
        batch.support_ids_BTK[rows],
        batch.teacher_logprobs_BTK[rows],
        batch.support_mask_BTK[rows],
        batch.mask_BT[rows],
    )


def choose_support(
    cfg: LossConfig,
    base: SupportBatch,
    scored: ScoredBatch,
    rollouts: RolloutBatch,
    rows: list[int],
) -> SupportBatch:
    """The support the loss uses, built from the teacher top-K base (rows of the batch)."""
    b = _take(base, rows)
    if cfg.support == "teacher_topk":
        return b
    ids_BTK = torch.where(b.support_mask_BTK, b.support_ids_BTK, -1)
    if cfg.support == "teacher_topk_plus_sampled":
        return teacher_topk_with_sampled_support(
            ids_BTK,
            b.teacher_logprobs_BTK,
            rollouts.response_ids_BT[rows],
            scored.teacher_token_logprobs_BT[rows],
            b.mask_BT,
        )
    student_BTK = rollouts.student_topk_ids_BTK[rows]
    if cfg.support == "intersection":
        return teacher_student_intersection_support(
            ids_BTK, b.teacher_logprobs_BTK, student_BTK, b.mask_BT
        )
    if scored.extra_logprobs_BTK is None:
        raise ValueError("loss.support=student_topk needs the teacher's extra_logprobs")
    return student_topk_support(student_BTK, scored.extra_logprobs_BTK[rows], b.mask_BT)


def _logits_fn(model: Any, hidden_BTD: Tensor, cfg: LossConfig) -> Any:
    """(ids_BTK) -> z_BTK and () -> log Z_BT, fused or naive."""
    weight = lm_head_weight(model)
    if cfg.fused:
        return (
            lambda ids: support_logits(hidden_BTD, weight, ids, cfg.chunk_size),
            lambda: student_logz(hidden_BTD, weight, cfg.chunk_size),
        )
    logits_BTV = model.get_output_embeddings()(hidden_BTD).float()
    return (lambda ids: logits_BTV.gather(-1, ids)), (lambda: torch.logsumexp(logits_BTV, -1))


def micro_loss(
    model: Any,
    rollouts: RolloutBatch,
    scored: ScoredBatch,
    rows: list[int],
    cfg: LossConfig,
    pad_id: int,
    autocast: Any = contextlib.nullcontext,
    body: torch.nn.Module | None = None,
) -> tuple[Tensor, int, dict[str, Tensor]]:
    """(loss of these rows as a token-mean, its token count, per-response metric sums).

    `body` computes the hidden states (the DDP-wrapped student under torchrun)."""
    device = lm_head_weight(model).device
    ids_BL, attention_BL, index_BT = (t.to(device) for t in _sequences(rollouts, rows, pad_id))
    with autocast():
        hidden_BLD = (body or HiddenStates(model))(ids_BL, attention_BL)
    D = hidden_BLD.shape[-1]
    hidden_BTD = hidden_BLD.gather(1, index_BT.unsqueeze(-1).expand(-1, -1, D))
    z_of, logz_of = _logits_fn(model, hidden_BTD, cfg)
    base = _take(scored.support, rows)
    base = replace(
        base,
        support_ids_BTK=base.support_ids_BTK.to(device),
        teacher_logprobs_BTK=base.teacher_logprobs_BTK.to(device),
        support_mask_BTK=base.support_mask_BTK.to(device),
        mask_BT=base.mask_BT.to(device),
    )
    logz_BT: Tensor | None = None
    if cfg.variant == "sampled_token":
        y_BT1 = rollouts.response_ids_BT[rows].to(device).unsqueeze(-1)
        logz_BT = logz_of()
        logp_BT = z_of(y_BT1).squeeze(-1) - logz_BT
        mask_BT = scored.token_mask_BT[rows].to(device)
        loss = sampled_token_opd(
            logp_BT,
            rollouts.old_logprobs_BT[rows].to(device),
            scored.teacher_token_logprobs_BT[rows].to(device),
            mask_BT,
            gamma=cfg.gamma,
            clip=cfg.clip,
        )
        tokens = int(mask_BT.sum())
    else:
        batch = choose_support(cfg, base, scored, rollouts, list(range(len(rows))))
        if cfg.entropy_fraction < 1.0:
            entropy_BT = student_entropy(hidden_BTD.detach(), lm_head_weight(model))
            batch = filter_by_entropy(batch, entropy_BT, cfg.entropy_fraction)
        z_BTK = z_of(batch.support_ids_BTK)
        if cfg.variant == "lsm":
            loss = truncated_rkl(z_BTK, batch)
        else:
            logz_BT = logz_of()
            if cfg.variant == "unnormalized":
                loss = truncated_rkl(z_BTK, batch, renormalize=False, student_logz_BT=logz_BT)
            else:
                loss = stopgrad_truncated_rkl(
                    z_BTK, batch, renormalize=bool(cfg.renormalize), student_logz_BT=logz_BT
                )
        tokens = int(batch.mask_BT.sum())
    metrics = _support_metrics(z_of, logz_of, logz_BT, base, rollouts, rows)
    return loss, tokens, metrics


SUPPORT_METRICS = ("positions", "rkl_support", "student_mass", "teacher_mass", "overlap_ratio")


@torch.no_grad()
def _support_metrics(
    z_of: Any,
    logz_of: Any,
    logz_BT: Tensor | None,
    base: SupportBatch,
    rollouts: RolloutBatch,
    rows: list[int],
) -> dict[str, Tensor]:
    """Per-response sums [B] of each of SUPPORT_METRICS (overlap_ratio as shared slots / K),
    so the step can total them over any grouping of responses."""
    z_BTK = z_of(base.support_ids_BTK).detach()
    logz = (logz_BT if logz_BT is not None else logz_of()).detach()
    slot_BTK = base.support_mask_BTK & base.mask_BT.unsqueeze(-1)
    p_BTK = torch.where(slot_BTK, (z_BTK - logz.unsqueeze(-1)).exp(), 0.0)
    student_topk = rollouts.student_topk_ids_BTK[rows].to(base.support_ids_BTK.device)
    shared_BTK = slot_BTK & (base.support_ids_BTK.unsqueeze(-1) == student_topk.unsqueeze(-2)).any(
        -1
    )
    q_BTK = torch.where(shared_BTK, base.teacher_logprobs_BTK.float().exp(), 0.0)
    return {
        "positions": base.mask_BT.sum(-1).double().cpu(),
        "rkl_support": truncated_rkl_per_position(z_BTK, base).sum(-1).double().cpu(),
        "student_mass": p_BTK.sum((-1, -2)).double().cpu(),
        "teacher_mass": q_BTK.sum((-1, -2)).double().cpu(),
        "overlap_ratio": shared_BTK.sum((-1, -2)).double().cpu() / base.k,
    }


@dataclass(frozen=True)
class RowGroups:
    """How a step's responses group, for the loss weights and the per-group metrics.

    teacher_B: the teacher of each response (micro-batches never mix teachers);
    weight_B: each response's loss weight (its teacher's `weight`); members: label ->
    rows, e.g. "teacher/math" and "task/addition", with every label of the run present
    (empty too) so that torchrun ranks reduce the same list of numbers.
    """

    teacher_B: list[int]
    weight_B: list[float]
    members: dict[str, list[int]]

    @classmethod
    def single(cls, batch_size: int) -> RowGroups:
        return cls([0] * batch_size, [1.0] * batch_size, {})


def _micro_batches(groups: RowGroups, grad_accumulation: int) -> list[tuple[list[int], float]]:
    """(rows, loss weight) of each micro-batch: each teacher's rows in `grad_accumulation`
    interleaved parts."""
    out = []
    for teacher in sorted(set(groups.teacher_B)):
        rows = [b for b, t in enumerate(groups.teacher_B) if t == teacher]
        for i in range(grad_accumulation):
            part = rows[i::grad_accumulation]
            if part:
                out.append((part, groups.weight_B[part[0]]))
    return out


def _group_means(sums_B: dict[str, Tensor], members: dict[str, list[int]]) -> list[float]:
    """Flat [overall SUPPORT_METRICS, then each label's, in sorted label order]."""
    flat = [float(sums_B[k].sum()) for k in SUPPORT_METRICS]
    for label in sorted(members):
        index = torch.tensor(members[label], dtype=torch.long)
        flat += [float(sums_B[k][index].sum()) for k in SUPPORT_METRICS]
    return flat


def _means(flat: Sequence[float]) -> dict[str, float]:
    values = dict(zip(SUPPORT_METRICS, flat, strict=True))
    positions = values.pop("positions")
    means = {k: v / positions for k, v in values.items()} if positions else {}
    means["positions"] = positions
    return means


def train_step(
    model: Any,
    optimizer: torch.optim.Optimizer,
    rollouts: RolloutBatch,
    scored: ScoredBatch,
    cfg: LossConfig,
    lr: float,
    grad_clip: float,
    grad_accumulation: int,
    pad_id: int,
    autocast: Any = contextlib.nullcontext,
    body: torch.nn.Module | None = None,
    parallel: Parallel = Parallel(),  # noqa: B008 (frozen, a world of one)
    groups: RowGroups | None = None,
) -> StepResult:
    """Forward, loss, backward over the micro-batches, clip, AdamW step.

    The loss is the token-mean over every response of the step, each response weighted by
    `groups.weight_B`. Under torchrun `body` is the DDP-wrapped student and the loss, token
    count and metrics returned are the whole world's."""
    B = len(rollouts.response_ids)
    groups = groups or RowGroups.single(B)
    if cfg.variant == "sampled_token":
        local_total = int(scored.token_mask_BT.sum())
    else:
        local_total = int(scored.support.mask_BT.sum())  # entropy filtering narrows per micro
    total = int(parallel.all_reduce_sum([local_total])[0])
    splits = _micro_batches(groups, grad_accumulation)
    no_sync = getattr(body, "no_sync", contextlib.nullcontext)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss_sum, tokens_sum = 0.0, 0
    teachers = sorted(set(groups.teacher_B) | {0})
    teacher_loss = dict.fromkeys(teachers, 0.0)
    teacher_tokens = dict.fromkeys(teachers, 0.0)
    sums_B = {k: torch.zeros(B, dtype=torch.float64) for k in SUPPORT_METRICS}
    if not splits:  # nothing to learn from on this rank: DDP still needs its backward
        _zero_backward(model, body, pad_id)
    for i, (rows, group_weight) in enumerate(splits):
        last = i == len(splits) - 1
        # DDP averages gradients over ranks; scaling by the world size turns that mean back
        # into the sum of every rank's token-weighted share.
        with contextlib.nullcontext() if last else no_sync():
            loss, tokens, metrics = micro_loss(
                model, rollouts, scored, rows, cfg, pad_id, autocast, body
            )
            weight = tokens / max(total, 1) if total else 1.0 / (len(splits) * parallel.world_size)
            (loss * (weight * group_weight * parallel.world_size)).backward()
        loss_sum += float(loss.detach()) * weight * group_weight
        tokens_sum += tokens
        teacher = groups.teacher_B[rows[0]]
        teacher_loss[teacher] += float(loss.detach()) * tokens
        teacher_tokens[teacher] += tokens
        index = torch.tensor(rows, dtype=torch.long)
        for key in SUPPORT_METRICS:
            sums_B[key][index] = metrics[key]
    flat = _group_means(sums_B, groups.members)
    per_teacher = [v for t in teachers for v in (teacher_loss[t], teacher_tokens[t])]
    reduced = parallel.all_reduce_sum([loss_sum, tokens_sum, *per_teacher, *flat])
    loss_sum, tokens_sum = reduced[0], int(reduced[1])
    n_teacher = 2 * len(teachers)
    pairs = reduced[2 : 2 + n_teacher]
    losses_by_teacher = {
        t: pairs[2 * j] / pairs[2 * j + 1] for j, t in enumerate(teachers) if pairs[2 * j + 1]
    }
    flat = reduced[2 + n_teacher :]
    n = len(SUPPORT_METRICS)
    by_label = {
        label: _means(flat[n * (j + 1) : n * (j + 2)])
        for j, label in enumerate(sorted(groups.members))
    }
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(
        loss_sum, grad_norm, lr, tokens_sum, _means(flat[:n]), by_label, losses_by_teacher
    )


def _zero_backward(model: Any, body: torch.nn.Module | None, pad_id: int) -> None:
    """A backward of 0 through every parameter, so DDP's all-reduce runs on this rank."""
    device = lm_head_weight(model).device
    ids_BL = torch.full((1, 1), pad_id, dtype=torch.long, device=device)
    hidden_BLD = (body or HiddenStates(model))(ids_BL, torch.ones_like(ids_BL))
    (hidden_BLD.sum() * 0 + lm_head_weight(model).sum() * 0).backward()
