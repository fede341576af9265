"""`train(config) -> RunResult`: the OPD loop, from a validated config to checkpoints.

Why this module exists: it is the library entry point the CLI is a thin launcher over
(STYLE.md habit 11). Each step: sample rollouts from the student (top-p), plan them with
the tokenizer bridge, score them on the teacher over one stream, build the support, take
one optimiser step, write a metrics line, checkpoint every `checkpoint.interval` steps.

Start-up validates everything before writing anything (`startup.py`): any problem raises
`ConfigError` (the CLI: exit 2, one line) with nothing in the run directory touched.

Resume is exact: the checkpoint holds the data position, model and optimiser (and the RNG
state); sampling seeds are a function of (seed, step, sequence) and the schedule of the
step. If the teacher stays unavailable past `teacher_unavailable_timeout_s`, the loop
checkpoints the state of the start of the step it could not finish and raises
`TeacherUnavailableError` (exit 3).

Under torchrun (`distributed.py`) every rank runs this loop on its shard of each step's
prompts with its own teacher stream; the student body is wrapped in DDP, rank 0 alone
writes, and at the end the ranks compare parameter digests (`ranks.json`).

What it does not know: the maths of the losses (opd_client.losses), alignment
(opd_client.align) or the wire (opd_client SDK).
"""

from __future__ import annotations

import contextlib
import functools
import json
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
from opd_client.train.config_load import config_to_dict
from opd_client.train.distributed import (
    Parallel,
    data_parallel,
    param_digest,
    process_group,
)
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
    tensorboard_writer,
    truncate_metrics,
)
from opd_client.train.overlap import rollout_and_score
from opd_client.train.pipeline import (
    TeacherSession,
    TeacherUnavailableError,
    assemble,
    plan_requests,
)
from opd_client.train.rollout import SamplingKey, load_prompts, prompt_order
from opd_client.train.startup import (
    auth_token,
    check_resume,
    check_teacher,
    connect,
    load_student,
    render_prompts,
)
from opd_client.train.step import lr_at, train_step

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


def train(config: TrainConfig, allow_teacher_change: bool = False) -> RunResult:
    """Runs (or resumes) the run in `config.run_dir` up to `config.max_steps`."""
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    parallel = Parallel.from_env()
    _check_world(config, parallel)
    device = parallel.device(config.device)
    records = load_prompts(config.prompts)
    saved = ckpt.find_latest(config.checkpoint_dir)
    student_dir = Path(config.student)
    try:
        student_side = TokenizerSide.load(student_dir)
    except AlignError as err:
        raise ConfigError(f"student: {err}") from None
    model = load_student(saved.model_dir if saved else student_dir, device)
    session, info = connect(config, auth_token(config))
    with contextlib.ExitStack() as stack:
        stack.push(lambda *exc: session.__exit__(*exc))
        # Past the teacher wait, so a rank waiting for its teacher never times the others out.
        stack.enter_context(
            process_group(parallel, device, config.teacher_unavailable_timeout_s + 600)
        )
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
        check_teacher(config, info, bridge)
        prompt_ids = render_prompts(config, records, bridge, model, info)
        eval_set = load_eval_set(config, bridge.student.render_prompt)
        if saved is not None:
            check_resume(config, saved, info.fingerprint, allow_teacher_change)
        return _run(
            config, model, bridge, session, info, records, prompt_ids, saved, eval_set, parallel
        )


def _check_world(config: TrainConfig, parallel: Parallel) -> None:
    n = parallel.world_size
    if config.prompts_per_step % n:
        raise ConfigError(
            f"prompts_per_step: {config.prompts_per_step} does not split over {n} torchrun "
            "processes (it counts the prompts of the whole job)"
        )
    local = config.prompts_per_step // n * config.rollout.samples_per_prompt
    if config.grad_accumulation > local:
        raise ConfigError(
            f"grad_accumulation: {config.grad_accumulation} > the {local} rollouts of each of "
            f"the {n} torchrun processes"
        )


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
    parallel: Parallel = Parallel(),  # noqa: B008 (frozen, a world of one)
) -> RunResult:
    """Everything after validation: from here on the run directory is written (by rank 0)."""
    run_dir, ckpt_dir = Path(config.run_dir), config.checkpoint_dir
    main = parallel.is_main
    resolved = config_to_dict(config)
    start = saved.step if saved is not None else 0
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.remove_partial(ckpt_dir)
        ckpt.write_atomic(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
        truncate_metrics(run_dir, start)
        truncate_metrics(run_dir, start + 1, EVAL_FILE)  # the eval at `start` is still valid
    parallel.barrier()
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    body = data_parallel(model, parallel)
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
        if main:
            write(step, rng, data_position, existing)
        parallel.barrier()  # no rank reads `latest` before the checkpoint is complete
        result.last_checkpoint = existing

    def write(step: int, rng: dict[str, torch.Tensor], data_position: int, existing: Path) -> None:
        if (existing / "state.json").is_file():  # the state of a step is always the same
            return
        state = {
            "data_position": data_position,
            "config": resolved,
            "teacher_fingerprint": info.fingerprint,
            "teacher_model": info.model,
        }
        ckpt.save_checkpoint(
            ckpt_dir,
            step=step,
            model=model,
            tokenizer=hf_tok,
            optimizer=optimizer,
            rng=rng,
            state=state,
            keep_last=config.checkpoint.keep_last,
        )

    def run_eval(step: int, evals: MetricsWriter | None) -> None:
        if eval_set is None or evals is None:
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

    vocab = int(info.vocab_size)
    plan = functools.partial(
        plan_requests,
        bridge,
        records,
        top_k=config.teacher.top_k,
        want_token_logprobs=want_token_lp,
        student_topk_extra=loss_cfg.support == "student_topk",
        teacher_vocab=vocab,
    )
    bar = progress_bar(config.max_steps, start, config.progress and main)
    with contextlib.ExitStack() as writers:
        writers.enter_context(contextlib.closing(bar))
        metrics = evals = None  # only rank 0 writes
        if main:
            board = None
            if config.tensorboard:
                board = writers.enter_context(
                    contextlib.closing(tensorboard_writer(run_dir, start))
                )
            metrics = writers.enter_context(MetricsWriter(run_dir, tensorboard=board))
            evals = writers.enter_context(MetricsWriter(run_dir, EVAL_FILE, board, "eval"))
        kept_evals = read_metrics(run_dir, EVAL_FILE)
        if evals is not None:  # TensorBoard purged the kept eval at `start`: write it again
            for record in kept_evals:
                if int(record["step"]) == start:
                    evals.mirror(record)
        if start not in {int(r["step"]) for r in kept_evals} and start < config.max_steps:
            run_eval(start, evals)
        for step in range(start, config.max_steps):
            rng_at_start = ckpt.capture_rng()
            order = prompt_order(len(records), config.seed, position, config.prompts_per_step)
            mine = parallel.shard(order)
            first = parallel.rank * len(mine) * config.rollout.samples_per_prompt
            gone: TeacherUnavailableError | None = None
            try:
                step_data = rollout_and_score(
                    model,
                    [prompt_ids[i] for i in mine],
                    mine,
                    config.rollout,
                    stop_ids,
                    pad_id,
                    config.teacher.top_k,
                    SamplingKey(config.seed, step, first),
                    plan,
                    session,
                    config.teacher_unavailable_timeout_s,
                )
            except TeacherUnavailableError as err:
                gone = err
            if parallel.any(gone is not None):  # every rank stops at the same step
                save(step, rng_at_start, position)
                raise gone or TeacherUnavailableError("another rank's teacher stayed unavailable")
            rollouts, latencies = step_data.rollouts, step_data.latencies_s
            t2 = time.perf_counter()
            scored = assemble(
                bridge, step_data.plans, step_data.outputs, rollouts, latencies, vocab
            )
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
                body,
                parallel,
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
                "rollout_tokens_per_s": rollouts.num_tokens / max(step_data.generate_s, 1e-9),
                "scoring_tokens_per_s": scored.teacher_tokens / max(step_data.scoring_s, 1e-9),
                "train_tokens_per_s": rollouts.num_tokens / max(t3 - t2, 1e-9),
                "teacher_latency_s": sum(latencies) / max(len(latencies), 1),
                "teacher_blocked_s": step_data.blocked_s,
                "teacher_wait_s": step_data.waited_s,
                "data_position": position,
            }
            if metrics is not None:
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
    _check_ranks_agree(model, parallel, run_dir)
    return result


def _check_ranks_agree(model: Any, parallel: Parallel, run_dir: Path) -> None:
    """Under torchrun: every rank's parameter digest into ranks.json; unequal ones raise."""
    if not parallel.enabled:
        return
    digests = parallel.all_gather(param_digest(model))
    if parallel.is_main:
        report = {"world_size": parallel.world_size, "param_sha256_by_rank": digests}
        ckpt.write_atomic(run_dir / "ranks.json", json.dumps(report, indent=2) + "\n")
    if len(set(digests)) != 1:
        raise RuntimeError(f"the ranks' parameters differ at the end of the run: {digests}")
