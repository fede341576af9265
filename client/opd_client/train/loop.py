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

Several teachers (`teachers.py`): every prompt is routed to one; each teacher scores its
own responses on its own stream, with its own tokenizer bridge; the loss is the token-mean
over all responses with per-teacher weights, and metrics come per teacher and per task.
A teacher that stops answering while others answer delays only its own prompts: they go
back in a queue (part of the checkpointed data state) and are taken first next step.

Under torchrun (`distributed.py`) every rank runs this loop on its shard of each step's
prompts with its own teacher streams; the student body is wrapped in DDP, rank 0 alone
writes, and at the end the ranks compare parameter digests (`ranks.json`).

What it does not know: the maths of the losses (opd_client.losses), alignment
(opd_client.align) or the wire (opd_client SDK).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from opd_client.align import TokenizerSide
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
from opd_client.train.overlap import TeacherOutages, rollout_and_score
from opd_client.train.pipeline import TeacherUnavailableError, assemble
from opd_client.train.rollout import PromptRecord, SamplingKey, load_prompts, prompt_order
from opd_client.train.startup import check_resume, load_student, render_prompts
from opd_client.train.step import lr_at, train_step
from opd_client.train.step_metrics import row_groups, step_record
from opd_client.train.teachers import TeacherLink, open_teachers, route_prompts

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
    routes = route_prompts(config, records, Path(config.prompts).name)
    saved = ckpt.find_latest(config.checkpoint_dir)
    student_dir = Path(config.student)
    try:
        student_side = TokenizerSide.load(student_dir)
    except AlignError as err:
        raise ConfigError(f"student: {err}") from None
    model = load_student(saved.model_dir if saved else student_dir, device)
    with contextlib.ExitStack() as stack:
        links = open_teachers(config, student_side, records, stack)
        # Past the teacher wait, so a rank waiting for its teacher never times the others out.
        stack.enter_context(
            process_group(parallel, device, config.teacher_unavailable_timeout_s + 600)
        )
        prompt_ids = render_prompts(config, records, routes, links, model)
        eval_set = load_eval_set(config, student_side.render_prompt)
        if saved is not None:
            fingerprints = {link.name: link.fingerprint for link in links}
            check_resume(config, saved, fingerprints, allow_teacher_change)
        job = _Job(config, model, links, records, routes, prompt_ids, eval_set, parallel)
        return job.run(saved)


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


@dataclass
class _DataState:
    """Where the run is in its prompt stream: `position` fresh prompts consumed so far and
    `queue`, prompts (file indices) whose teacher did not answer, taken first next step."""

    position: int = 0
    queue: list[int] = field(default_factory=list)

    def next_prompts(self, config: TrainConfig, num_prompts: int) -> list[int]:
        """The step's prompts (queued ones first); advances the state past them."""
        taken, self.queue = (
            self.queue[: config.prompts_per_step],
            self.queue[config.prompts_per_step :],
        )
        fresh = config.prompts_per_step - len(taken)
        order = taken + prompt_order(num_prompts, config.seed, self.position, fresh)
        self.position += fresh
        return order


class _Job:
    """Everything after validation: from here on the run directory is written (by rank 0)."""

    def __init__(
        self,
        config: TrainConfig,
        model: Any,
        links: list[TeacherLink],
        records: list[PromptRecord],
        routes: list[int],
        prompt_ids: list[list[int]],
        eval_set: EvalSet | None,
        parallel: Parallel,
    ) -> None:
        self.config, self.model, self.links = config, model, links
        self.records, self.routes, self.prompt_ids = records, routes, prompt_ids
        self.eval_set, self.parallel = eval_set, parallel
        self.run_dir, self.ckpt_dir = Path(config.run_dir), config.checkpoint_dir
        self.resolved = config_to_dict(config)
        student = links[0].bridge  # every bridge shares the student side
        self.hf_tok = student.student.hf
        tok = self.hf_tok
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.stop_ids = stop_ids_for(student.student_roles, tok)
        self.tasks = sorted({r.task for r in records if r.task is not None})
        self.optimizer: torch.optim.Optimizer | None = None
        self.result = RunResult(self.run_dir, 0, 0, teacher_fingerprint=links[0].fingerprint)

    def save(self, step: int, rng: dict[str, torch.Tensor], data: _DataState) -> None:
        path = self.ckpt_dir / f"{ckpt.STEP_PREFIX}{step:08d}"
        # The state of a step is always the same, so an existing one is kept.
        if self.parallel.is_main and not (path / ckpt.MANIFEST).is_file():
            assert self.optimizer is not None
            state = {
                "data_position": data.position,
                "requeued": list(data.queue),
                "config": self.resolved,
                "teacher_fingerprint": self.links[0].fingerprint,
                "teacher_fingerprints": {link.name: link.fingerprint for link in self.links},
                "teacher_model": self.links[0].info.model,
            }
            ckpt.save_checkpoint(
                self.ckpt_dir,
                step=step,
                model=self.model,
                tokenizer=self.hf_tok,
                optimizer=self.optimizer,
                rng=rng,
                state=state,
                keep_last=self.config.checkpoint.keep_last,
            )
        self.parallel.barrier()  # no rank reads the checkpoint before it is complete
        self.result.last_checkpoint = path

    def run_eval(self, step: int, evals: MetricsWriter | None) -> None:
        if self.eval_set is None or evals is None:
            return
        records = self.eval_set.records
        res = evaluate(
            self.model,
            self.hf_tok,
            [r.prompt for r in records],
            [str(r.answer) for r in records],
            self.eval_set.prompt_ids,
            self.stop_ids,
            self.pad_id,
            self.config.eval,
            self.config.rollout.top_p,
            self.eval_set.verifier,
            tasks=[r.task for r in records],
        )
        record = res.to_record(step)
        evals.write(record)
        self.result.evals.append(record)
        logger.info("eval at step %d: accuracy %.3f (n=%d)", step, res.accuracy, res.n)

    def run(self, saved: ckpt.Checkpoint | None) -> RunResult:
        config, parallel, model = self.config, self.parallel, self.model
        start = saved.step if saved is not None else 0
        if parallel.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.remove_partial(self.ckpt_dir)
            text = yaml.safe_dump(self.resolved, sort_keys=False)
            ckpt.write_atomic(self.run_dir / "config.yaml", text)
            truncate_metrics(self.run_dir, start)
            truncate_metrics(self.run_dir, start + 1, EVAL_FILE)  # the eval at `start` stays
        parallel.barrier()
        if config.gradient_checkpointing:  # transformers 5 renamed it
            enable = getattr(model, "activation_checkpointing_enable", None)
            (enable or model.gradient_checkpointing_enable)()
        body = data_parallel(model, parallel)
        o = config.optim
        self.optimizer = optimizer = torch.optim.AdamW(
            model.parameters(), lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay
        )
        data = _DataState()
        torch.manual_seed(config.seed)
        if saved is not None:
            ckpt.load_optimizer(optimizer, saved.path)
            ckpt.restore_rng(ckpt.load_rng(saved.path))
            data = _DataState(
                int(saved.state["data_position"]), [int(i) for i in saved.state.get("requeued", [])]
            )
            logger.info("resuming from %s (step %d)", saved.path, start)
        self.result.start_step = start
        self.result.last_checkpoint = saved.path if saved else None
        cast = (
            (lambda: torch.autocast(torch.device(config.device).type, dtype=torch.bfloat16))
            if config.precision == "bf16"
            else contextlib.nullcontext
        )
        outages = TeacherOutages()
        bar = progress_bar(config.max_steps, start, config.progress and parallel.is_main)
        with contextlib.ExitStack() as writers:
            metrics, evals = self._open_writers(writers, start)
            writers.enter_context(contextlib.closing(bar))
            for step in range(start, config.max_steps):
                rng_at_start = ckpt.capture_rng()
                at_start = _DataState(data.position, list(data.queue))
                order = data.next_prompts(config, len(self.records))
                mine = parallel.shard(order)
                first = parallel.rank * len(mine) * config.rollout.samples_per_prompt
                gone: TeacherUnavailableError | None = None
                try:
                    scored_rollouts = rollout_and_score(
                        model,
                        [self.prompt_ids[i] for i in mine],
                        mine,
                        [self.routes[i] for i in mine],
                        config.rollout,
                        self.stop_ids,
                        self.pad_id,
                        max(link.config.top_k for link in self.links),
                        SamplingKey(config.seed, step, first),
                        self.links,
                        config.teacher_unavailable_timeout_s,
                        config.requeue_after_s,
                        outages,
                    )
                except TeacherUnavailableError as err:
                    gone = err
                if parallel.any(gone is not None):  # every rank stops at the same step
                    self.save(step, rng_at_start, at_start)
                    raise gone or TeacherUnavailableError("another rank's teacher stayed away")
                requeued = [
                    i for part in parallel.all_gather(scored_rollouts.requeued) for i in part
                ]
                data.queue += requeued
                t2 = time.perf_counter()
                rollouts = scored_rollouts.rollouts
                scored = assemble(
                    [self.links[t].bridge for t in scored_rollouts.teacher_B],
                    scored_rollouts.plans,
                    scored_rollouts.outputs,
                    rollouts,
                    scored_rollouts.latencies_s,
                    [self.links[t].vocab for t in scored_rollouts.teacher_B],
                )
                groups = row_groups(self.links, self.records, self.tasks, scored_rollouts)
                out = train_step(
                    model,
                    optimizer,
                    rollouts,
                    scored,
                    config.loss,
                    lr_at(step, config.optim, config.max_steps),
                    config.optim.grad_clip,
                    config.grad_accumulation,
                    self.pad_id,
                    cast,
                    body,
                    parallel,
                    groups,
                )
                record = step_record(
                    step, out, scored, scored_rollouts, self.links, groups, time.perf_counter() - t2
                )
                record.update(
                    data_position=data.position, requeued=len(requeued), queued=len(data.queue)
                )
                if metrics is not None:
                    metrics.write(record)
                self.result.losses.append(out.loss)
                self.result.steps_done += 1
                bar.update(1)
                bar.set_postfix(loss=f"{out.loss:.4f}", gnorm=f"{out.grad_norm:.2f}")
                done = step + 1
                if done % config.checkpoint.interval == 0 or done == config.max_steps:
                    self.save(done, ckpt.capture_rng(), data)
                every = config.eval.interval
                if (every and done % every == 0) or done == config.max_steps:
                    self.run_eval(done, evals)
        if data.queue:
            logger.warning(
                "%d queued prompts were not trained on before max_steps", len(data.queue)
            )
        _check_ranks_agree(model, parallel, self.run_dir)
        return self.result

    def _open_writers(
        self, writers: contextlib.ExitStack, start: int
    ) -> tuple[MetricsWriter | None, MetricsWriter | None]:
        """Rank 0's metrics and eval writers (None on the others); the eval before the first
        step when it is not there yet."""
        metrics = evals = None
        if self.parallel.is_main:
            board = None
            if self.config.tensorboard:
                board = writers.enter_context(
                    contextlib.closing(tensorboard_writer(self.run_dir, start))
                )
            metrics = writers.enter_context(MetricsWriter(self.run_dir, tensorboard=board))
            evals = writers.enter_context(MetricsWriter(self.run_dir, EVAL_FILE, board, "eval"))
        kept_evals = read_metrics(self.run_dir, EVAL_FILE)
        if evals is not None:  # TensorBoard purged the kept eval at `start`: write it again
            for record in kept_evals:
                if int(record["step"]) == start:
                    evals.mirror(record)
        if start not in {int(r["step"]) for r in kept_evals} and start < self.config.max_steps:
            self.run_eval(start, evals)
        return metrics, evals


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
