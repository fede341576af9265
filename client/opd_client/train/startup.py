"""Start-up checks of a run: everything validated before anything is written.

Why this module exists: a failed start must leave the run directory untouched and say
what was wrong in one line (exit code 2). These checks need the student model, the
teacher (reachable, `top_k` within its `max_top_k`, extra_ids when the support needs
them), prompt lengths on both sides, and — when resuming — the checkpoint's config and
teacher fingerprint. Each raises `ConfigError` naming the field, file line or teacher.

What it does not know: the training step, metrics or how checkpoints are written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from opd_client.align import TokenizerBridge
from opd_client.train import checkpoint as ckpt
from opd_client.train.config import ConfigError, TrainConfig
from opd_client.train.config_load import config_differences, config_to_dict
from opd_client.train.pipeline import TeacherSession
from opd_client.train.step import lm_head_weight


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


def auth_token(config: TrainConfig) -> str | None:
    path = config.teacher.auth_token_file
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as err:
        raise ConfigError(f"teachers[0].auth_token_file: cannot read {path}: {err}") from None


def connect(config: TrainConfig, token: str | None) -> tuple[TeacherSession, Any]:
    session = TeacherSession(
        config.teacher.address,
        timeout_s=config.teacher.timeout_s,
        auth_token=token,
        client_name=config.teacher_client_name,
    )
    session.__enter__()
    try:
        info = session.get_info()
    except Exception as err:
        session.__exit__(None, None, None)
        detail = err.details() if hasattr(err, "details") else str(err)  # type: ignore[union-attr]
        address = ",".join(config.teacher.address)
        raise ConfigError(
            f"teachers[0].address: teacher {address} unreachable ({detail})"
        ) from None
    return session, info


def check_teacher(config: TrainConfig, info: Any, bridge: TokenizerBridge) -> None:
    if config.teacher.top_k > info.max_top_k:
        raise ConfigError(
            f"teachers[0].top_k: {config.teacher.top_k} > the teacher's max_top_k {info.max_top_k}"
        )
    if config.loss.support == "student_topk":
        if not info.supports_extra_ids:
            raise ConfigError("loss.support: student_topk needs a teacher with extra_ids")
        if not bridge.identity:
            raise ConfigError("loss.support: student_topk needs the teacher's tokenizer for now")


def check_resume(
    config: TrainConfig, saved: ckpt.Checkpoint, fingerprint: str, allow_teacher_change: bool
) -> None:
    diffs = config_differences(saved.state["config"], config_to_dict(config))
    if diffs:
        raise ConfigError(
            f"config: differs from the checkpoint {saved.path.name}'s at {'; '.join(diffs[:4])}"
            " (use another run_dir for a different run)"
        )
    if saved.state.get("teacher_fingerprint") != fingerprint and not allow_teacher_change:
        raise ConfigError(
            f"teacher: fingerprint {fingerprint[:12]} differs from the checkpoint's "
            f"{str(saved.state.get('teacher_fingerprint'))[:12]} (another model or tokenizer); "
            "pass --allow-teacher-change to resume anyway"
        )


def render_prompts(
    config: TrainConfig, records: list[Any], bridge: TokenizerBridge, model: Any, info: Any
) -> list[list[int]]:
    limit = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    new = config.rollout.max_new_tokens
    out = []
    for r in records:
        ids = bridge.student.render_prompt(r.prompt)
        teacher_len = len(bridge.teacher.render_prompt(r.prompt))
        if limit and len(ids) + new > limit:
            raise ConfigError(
                f"prompts: line {r.line}: {len(ids)} prompt tokens + rollout.max_new_tokens {new}"
                f" > the student's max_position_embeddings {limit}"
            )
        if info.max_sequence_length and teacher_len + new > info.max_sequence_length:
            raise ConfigError(
                f"prompts: line {r.line}: {teacher_len} teacher prompt tokens + "
                f"rollout.max_new_tokens {new} > the teacher's max_sequence_length "
                f"{info.max_sequence_length}"
            )
        out.append(ids)
    return out
