"""The per-step metrics record, overall and per teacher and per task.

Why this module exists: a user watching a run needs to see, every step, whether the
student is learning and how much teacher signal survives — and, with several teachers,
whether each task is (DESIGN.md §1; verl's names: `student_mass`, `teacher_mass`,
`overlap_ratio`). `row_groups` says which responses of a step belong to which teacher and
task (and each response's loss weight); `step_record` turns the step's results into the
flat JSON object the metrics file and TensorBoard get, with `teachers.<name>` and
`tasks.<task>` sub-objects.

What it does not know: how the numbers are computed (step.py, align/) or written
(metrics.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opd_client.align import AlignStats
from opd_client.train.overlap import ScoredRollouts
from opd_client.train.pipeline import ScoredBatch
from opd_client.train.rollout import PromptRecord
from opd_client.train.step import RowGroups, StepResult
from opd_client.train.teachers import TeacherLink


def row_groups(
    links: Sequence[TeacherLink],
    records: Sequence[PromptRecord],
    tasks: Sequence[str],
    scored: ScoredRollouts,
) -> RowGroups:
    """Each response's teacher, loss weight and labels (`teacher/<name>`, `task/<task>`)."""
    teacher_B = scored.teacher_B
    members: dict[str, list[int]] = {f"teacher/{link.name}": [] for link in links}
    members.update({f"task/{task}": [] for task in tasks})
    for b, (teacher, index) in enumerate(zip(teacher_B, scored.rollouts.prompt_index, strict=True)):
        members[f"teacher/{links[teacher].name}"].append(b)
        task = records[index].task
        if task is not None:
            members[f"task/{task}"].append(b)
    weights = [links[t].config.weight for t in teacher_B]
    return RowGroups(list(teacher_B), weights, members)


def _bridge(stats: AlignStats) -> dict[str, float]:
    return {
        "aligned_fraction": stats.aligned_fraction,
        "kept_fraction": stats.kept_fraction,
        "mapped_mass_mean": stats.mapped_mass_mean,
        "mapped_mass_fraction": stats.mapped_mass_fraction,
    }


def step_record(
    step: int,
    out: StepResult,
    scored: ScoredBatch,
    scored_rollouts: ScoredRollouts,
    links: Sequence[TeacherLink],
    groups: RowGroups,
    train_s: float,
) -> dict[str, Any]:
    """One line of metrics.jsonl (this rank's bridge and throughput numbers, the whole
    job's loss and support metrics)."""
    rollouts, latencies = scored_rollouts.rollouts, scored_rollouts.latencies_s
    record: dict[str, Any] = {
        "step": step,
        "loss": out.loss,
        "grad_norm": out.grad_norm,
        "lr": out.lr,
        "loss_tokens": out.tokens,
        **out.metrics,
        **_bridge(scored.stats),
        "masked_by_reason": dict(sorted(scored.stats.masked.items())),
        "rollout_len_mean": rollouts.num_tokens / max(len(rollouts.response_ids), 1),
        "rollout_tokens_per_s": rollouts.num_tokens / max(scored_rollouts.generate_s, 1e-9),
        "scoring_tokens_per_s": scored.teacher_tokens / max(scored_rollouts.scoring_s, 1e-9),
        "train_tokens_per_s": rollouts.num_tokens / max(train_s, 1e-9),
        "teacher_latency_s": sum(latencies) / max(len(latencies), 1),
        "teacher_blocked_s": scored_rollouts.blocked_s,
        "teacher_wait_s": scored_rollouts.waited_s,
    }
    per_teacher: dict[str, Any] = {}
    for link in links:
        rows = groups.members[f"teacher/{link.name}"]
        entry = dict(out.groups.get(f"teacher/{link.name}", {}))
        if link.index in out.teacher_losses:
            entry["loss"] = out.teacher_losses[link.index]
        entry["responses"] = len(rows)
        entry.update(_bridge(AlignStats.total(scored.row_stats[b] for b in rows)))
        per_teacher[link.name] = entry
    record["teachers"] = per_teacher
    per_task: dict[str, Any] = {}
    for label, rows in groups.members.items():
        if label.startswith("task/"):
            entry = dict(out.groups.get(label, {}))
            entry["responses"] = len(rows)
            entry.update(_bridge(AlignStats.total(scored.row_stats[b] for b in rows)))
            per_task[label.removeprefix("task/")] = entry
    if per_task:
        record["tasks"] = per_task
    return record
