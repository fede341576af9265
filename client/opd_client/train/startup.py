"""Start-up checks of a run: everything validated before anything is written.

Why this module exists: a failed start must leave the run directory untouched and say
what was wrong in one line (exit code 2). These checks need the student model, prompt
lengths on the student's and each prompt's teacher's side, and — when resuming — the
checkpoint's config and every teacher's fingerprint (the teachers themselves are checked
as they are opened, `teachers.py`). Each raises `ConfigError` naming the field, file line
or teacher.

What it does not know: the training step, metrics or how checkpoints are written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from opd_client.train import checkpoint as ckpt
from opd_client.train.config import ConfigError, TrainConfig
from opd_client.train.config_load import config_differences, config_to_dict
from opd_client.train.rollout import PromptRecord
from opd_client.train.step import lm_head_weight
from opd_client.train.teachers import TeacherLink


def load_student(path: Path, device: str) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM

    where = f"student: {path}"
    if not (path / "config.json").is_file():
        raise ConfigError(f"{where} is not a model directory (no config.json)")
    try:
        AutoConfig.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except Exception as err:  # transformers raises many kinds; all mean "not a causal LM"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{where} is not a causal LM transformers can load ({first})") from None
    try:
        lm_head_weight(model)
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None
    return model.to(torch.device(device))  # type: ignore[arg-type]


def check_resume(
    config: TrainConfig,
    saved: ckpt.Checkpoint,
    fingerprints: dict[str, str],
    allow_teacher_change: bool,
) -> None:
    diffs = config_differences(saved.state["config"], config_to_dict(config))
    if diffs:
        raise ConfigError(
            f"config: differs from the checkpoint {saved.path.name}'s at {'; '.join(diffs[:4])}"
            " (use another run_dir for a different run)"
        )
    if allow_teacher_change:
        return
    saved_fps = saved.state.get("teacher_fingerprints")
    if saved_fps is None:  # a checkpoint from before several teachers: the first one's
        saved_fps = {next(iter(fingerprints)): saved.state.get("teacher_fingerprint")}
    for name, fingerprint in fingerprints.items():
        if saved_fps.get(name) != fingerprint:
            raise ConfigError(
                f"teacher {name}: fingerprint {fingerprint[:12]} differs from the checkpoint's "
                f"{str(saved_fps.get(name))[:12]} (another model or tokenizer); "
                "pass --allow-teacher-change to resume anyway"
            )


def render_prompts(
    config: TrainConfig,
    records: Sequence[PromptRecord],
    routes: Sequence[int],
    links: Sequence[TeacherLink],
    model: Any,
) -> list[list[int]]:
    """Student prompt ids of every record; a record too long for the student or for its
    teacher is a ConfigError naming the line."""
    limit = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    new = config.rollout.max_new_tokens
    out = []
    for r, route in zip(records, routes, strict=True):
        link = links[route]
        ids = link.bridge.student.render_prompt(r.prompt)
        teacher_len = len(link.bridge.teacher.render_prompt(r.prompt))
        if limit and len(ids) + new > limit:
            raise ConfigError(
                f"prompts: line {r.line}: {len(ids)} prompt tokens + rollout.max_new_tokens {new}"
                f" > the student's max_position_embeddings {limit}"
            )
        longest = int(link.info.max_sequence_length)
        if longest and teacher_len + new > longest:
            raise ConfigError(
                f"prompts: line {r.line}: {teacher_len} prompt tokens of {link.where} + "
                f"rollout.max_new_tokens {new} > its max_sequence_length {longest}"
            )
        out.append(ids)
    return out
