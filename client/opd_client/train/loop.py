"""`train(config) -> RunResult`: the OPD loop, from a validated config to checkpoints.

Why this module exists: it is the library entry point the CLI is a thin launcher over
(STYLE.md habit 11). Each step: sample rollouts from the student (top-p), plan them with
the tokenizer bridge, score them on the teacher over one stream, build the support, take
one optimiser step, write a metrics line, checkpoint every `checkpoint.interval` steps.

Start-up validates everything before writing anything: config, prompts file, student
(a causal LM with a bias-free LM head), the teacher (reachable, `top_k` within its
`max_top_k`, extra_ids when the support needs them), prompt lengths, and — when resuming
— that the checkpoint's config and teacher fingerprint match. Any problem raises
`ConfigError` (the CLI: exit 2, one line) with nothing in the run directory touched.

Resume is exact: the checkpoint holds the RNG state at the end of its step, the data
position, model and optimiser; the schedule is a function of the step. If the teacher
stays unavailable past `teacher_unavailable_timeout_s`, the loop checkpoints the state of
the start of the step it could not finish and raises `TeacherUnavailableError` (exit 3).

What it does not know: the maths of the losses (opd_client.losses), alignment
(opd_client.align) or the wire (opd_client SDK).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from opd_client.align import AlignConfig, TokenizerBridge, TokenizerSide
from opd_client.align.errors import AlignError
from opd_client.train import checkpoint as ckpt
from opd_client.train.config import ConfigError, TrainConfig
from opd_client.train.config_load import config_differences, config_to_dict
from opd_client.train.evaluate import (
    EVAL_FILE,
    EvalSet,
    evaluate,
    load_eval_set,
    stop_ids_for,
)
from opd_client.train.metrics import (
    MetricsWriter,
    progress_bar,
    read_metrics,
    truncate_metrics,
)
from opd_client.train.pipeline import (
    TeacherSession,
    TeacherUnavailableError,
    assemble,
    plan_requests,
    score_with_wait,
)
from opd_client.train.rollout import load_prompts, prompt_order, sample_rollouts
from opd_client.train.step import lm_head_weight, lr_at, train_step

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    start_step: int
    steps_done: int
    losses: list[float] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    last_checkpoint: Path | None = None
    teacher_fingerprint: str = ""


def _load_student(path: Path, device: str) -> Any:
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


def _auth_token(config: TrainConfig) -> str | None:
    path = config.teacher.auth_token_file
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as err:
        raise ConfigError(f"teachers[0].auth_token_file: cannot read {path}: {err}") from None


def _connect(config: TrainConfig, token: str | None) -> tuple[TeacherSession, Any]:
    session = TeacherSession(
        config.teacher.address, timeout_s=config.teacher.timeout_s, auth_token=token
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


def _check_teacher(config: TrainConfig, info: Any, bridge: TokenizerBridge) -> None:
    if config.teacher.top_k > info.max_top_k:
        raise ConfigError(
            f"teachers[0].top_k: {config.teacher.top_k} > the teacher's max_top_k {info.max_top_k}"
        )
    if config.loss.support == "student_topk":
        if not info.supports_extra_ids:
            raise ConfigError("loss.support: student_topk needs a teacher with extra_ids")
        if not bridge.identity:
            raise ConfigError("loss.support: student_topk needs the teacher's tokenizer for now")


def _check_resume(
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


def train(config: TrainConfig, allow_teacher_change: bool = False) -> RunResult:
    """Runs (or resumes) the run in `config.run_dir` up to `config.max_steps`."""
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    records = load_prompts(config.prompts)
    saved = ckpt.find_latest(config.checkpoint_dir)
    student_dir = Path(config.student)
    try:
        student_side = TokenizerSide.load(student_dir)
    except AlignError as err:
        raise ConfigError(f"student: {err}") from None
    model = _load_student(saved.model_dir if saved else student_dir, config.device)
    session, info = _connect(config, _auth_token(config))
    with contextlib.ExitStack() as stack:
        stack.push(lambda *exc: session.__exit__(*exc))
        with tempfile.TemporaryDirectory(prefix="opd-teacher-tok-") as tok_dir:
            try:
                session.save_tokenizer(Path(tok_dir))
                teacher_side = TokenizerSide.load(tok_dir)
            except AlignError as err:
                raise ConfigError(f"teacher tokenizer: {err}") from None
        roles = {s.role: int(s.id) for s in info.special_tokens}
        align = AlignConfig(
            special_policy=config.masking.special_policy,
            prefix_fallback=config.masking.prefix_fallback,
            on_lossy=config.masking.on_lossy,
        )
        bridge = TokenizerBridge(student_side, teacher_side, align, teacher_roles=roles)
        _check_teacher(config, info, bridge)
        prompt_ids = _render_prompts(config, records, bridge, model, info)
        eval_set = load_eval_set(config, bridge.student.render_prompt)
        if saved is not None:
            _check_resume(config, saved, info.fingerprint, allow_teacher_change)
        return _run(config, model, bridge, session, info, records, prompt_ids, saved, eval_set)


def _render_prompts(
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


def _run(
    config: TrainConfig,
    model: Any,
    bridge: TokenizerBridge,
    session: TeacherSession,
    info: Any,
    records: list[Any],
    prompt_ids: list[list[int]],
    saved: ckpt.Checkpoint | None,
    eval_set: EvalSet | None = None,
) -> RunResult:
    """Everything after validation: from here on the run directory is written."""
    run_dir, ckpt_dir = Path(config.run_dir), config.checkpoint_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt.remove_partial(ckpt_dir)
    resolved = config_to_dict(config)
    ckpt.write_atomic(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    o = config.optim
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay
    )
    start, position = 0, 0
    torch.manual_seed(config.seed)
    if saved is not None:
        ckpt.load_optimizer(optimizer, saved.path)
        ckpt.restore_rng(ckpt.load_rng(saved.path))
        start, position = saved.step, int(saved.state["data_position"])
        logger.info("resuming from %s (step %d)", saved.path, start)
    truncate_metrics(run_dir, start)
    truncate_metrics(run_dir, start + 1, EVAL_FILE)  # the eval at `start` is still valid
    hf_tok = bridge.student.hf
    pad_id = hf_tok.pad_token_id if hf_tok.pad_token_id is not None else hf_tok.eos_token_id
    stop_ids = stop_ids_for(bridge.student_roles, hf_tok)
    result = RunResult(run_dir, start, 0, teacher_fingerprint=info.fingerprint)
    result.last_checkpoint = saved.path if saved else None
    cast = (
        (lambda: torch.autocast(torch.device(config.device).type, dtype=torch.bfloat16))
        if config.precision == "bf16"
        else contextlib.nullcontext
    )
    loss_cfg = config.loss
    want_token_lp = loss_cfg.variant == "sampled_token" or (
        loss_cfg.support == "teacher_topk_plus_sampled"
    )

    def save(step: int, rng: dict[str, torch.Tensor], data_position: int) -> None:
        existing = ckpt_dir / f"{ckpt.STEP_PREFIX}{step:08d}"
        if (existing / "state.json").is_file():  # the state of a step is always the same
            result.last_checkpoint = existing
            return
        state = {
            "data_position": data_position,
            "config": resolved,
            "teacher_fingerprint": info.fingerprint,
            "teacher_model": info.model,
        }
        result.last_checkpoint = ckpt.save_checkpoint(
            ckpt_dir,
            step=step,
            model=model,
            tokenizer=hf_tok,
            optimizer=optimizer,
            rng=rng,
            state=state,
            keep_last=config.checkpoint.keep_last,
        )

    def run_eval(step: int, evals: MetricsWriter) -> None:
        if eval_set is None:
            return
        res = evaluate(
            model,
            hf_tok,
            [r.prompt for r in eval_set.records],
            [str(r.answer) for r in eval_set.records],
            eval_set.prompt_ids,
            stop_ids,
            pad_id,
            config.eval,
            config.rollout.top_p,
            eval_set.verifier,
        )
        record = res.to_record(step)
        evals.write(record)
        result.evals.append(record)
        logger.info("eval at step %d: accuracy %.3f (n=%d)", step, res.accuracy, res.n)

    bar = progress_bar(config.max_steps, start, config.progress)
    with (
        MetricsWriter(run_dir) as metrics,
        MetricsWriter(run_dir, EVAL_FILE) as evals,
        contextlib.closing(bar),
    ):
        done_evals = {int(r["step"]) for r in read_metrics(run_dir, EVAL_FILE)}
        if start not in done_evals and start < config.max_steps:
            run_eval(start, evals)
        for step in range(start, config.max_steps):
            rng_at_start = ckpt.capture_rng()
            order = prompt_order(len(records), config.seed, position, config.prompts_per_step)
            t0 = time.perf_counter()
            rollouts = sample_rollouts(
                model,
                [prompt_ids[i] for i in order],
                order,
                config.rollout,
                stop_ids,
                pad_id,
                config.teacher.top_k,
            )
            t1 = time.perf_counter()
            plans, requests = plan_requests(
                bridge,
                records,
                rollouts,
                config.teacher.top_k,
                want_token_lp,
                loss_cfg.support == "student_topk",
                int(info.vocab_size),
            )
            try:
                (outputs, latencies), waited = score_with_wait(
                    functools.partial(session.score_all, requests),
                    config.teacher_unavailable_timeout_s,
                )
            except TeacherUnavailableError:
                save(step, rng_at_start, position)
                raise
            t2 = time.perf_counter()
            scored = assemble(bridge, plans, outputs, rollouts, latencies, int(info.vocab_size))
            out = train_step(
                model,
                optimizer,
                rollouts,
                scored,
                loss_cfg,
                lr_at(step, config.optim, config.max_steps),
                config.optim.grad_clip,
                config.grad_accumulation,
                pad_id,
                cast,
            )
            t3 = time.perf_counter()
            position += config.prompts_per_step
            stats = scored.stats.to_dict()
            record = {
                "step": step,
                "loss": out.loss,
                "grad_norm": out.grad_norm,
                "lr": out.lr,
                "loss_tokens": out.tokens,
                **{k: v for k, v in out.metrics.items()},
                "aligned_fraction": stats["aligned_fraction"],
                "kept_fraction": stats["kept_fraction"],
                "mapped_mass_mean": stats["mapped_mass_mean"],
                "mapped_mass_fraction": stats["mapped_mass_fraction"],
                "masked_by_reason": stats["masked_by_reason"],
                "rollout_len_mean": rollouts.num_tokens / max(len(rollouts.response_ids), 1),
                "rollout_tokens_per_s": rollouts.num_tokens / max(t1 - t0, 1e-9),
                "scoring_tokens_per_s": scored.teacher_tokens / max(t2 - t1, 1e-9),
                "train_tokens_per_s": rollouts.num_tokens / max(t3 - t2, 1e-9),
                "teacher_latency_s": sum(latencies) / max(len(latencies), 1),
                "teacher_wait_s": waited,
                "data_position": position,
            }
            metrics.write(record)
            result.losses.append(out.loss)
            result.steps_done += 1
            bar.update(1)
            bar.set_postfix(loss=f"{out.loss:.4f}", gnorm=f"{out.grad_norm:.2f}")
            done = step + 1
            if done % config.checkpoint.interval == 0 or done == config.max_steps:
                save(done, ckpt.capture_rng(), position)
            every = config.eval.interval
            if (every and done % every == 0) or done == config.max_steps:
                run_eval(done, evals)
    return result
