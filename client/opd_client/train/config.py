"""The trainer's one validated configuration: YAML file + `--set key=value` overrides.

Why this module exists: a run is decided entirely by its config (STYLE.md habit 10), so
every knob lives in one dataclass per component, documented with unit and range, checked
at construction with a message that names the field (`loss.gamma: must be in [0, 1],
got 2`). Defaults live here and nowhere else. The resolved config is stored in every
checkpoint and compared on resume.

What it does not know: models, tokenizers or the teacher. Checks that need them (the
student is a causal LM, `top_k` ≤ the teacher's `max_top_k`, prompt lengths) are made by
the loop at start, with the same error type.

Loading (YAML, overrides, coercion) and describing a config live in `config_load.py`.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


class ConfigError(ValueError):
    """Bad trainer input (config, prompts, model dir, teacher at start): exit code 2."""


def _f(default: Any, doc: str) -> Any:
    """A dataclass field with its documentation (shown by `opd-train config --show`)."""
    if isinstance(default, list | dict) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


def require(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: {message}")


@dataclass(frozen=True)
class TeacherConfig:
    """One teacher service (one or several replicas of the same model)."""

    name: str = _f("teacher", "unique name of this teacher (metrics, routing, checkpoints)")
    address: tuple[str, ...] = _f((), "HOST:PORT of each replica (a string 'a:1,b:2' or a list)")
    auth_token_file: str | None = _f(None, "file holding the bearer token; null: no auth")
    top_k: int = _f(32, "K, the teacher's top-K per position, 1..the teacher's max_top_k")
    timeout_s: float = _f(60.0, "deadline of one teacher call in seconds, > 0")
    tasks: tuple[str, ...] = _f(
        (), "the prompts' `task` values this teacher scores (the routing table), e.g. [math]"
    )
    weight: float = _f(1.0, "weight of this teacher's responses in the token-mean loss, > 0")

    def __post_init__(self) -> None:
        require(bool(self.name.strip()), "name", "must not be empty")
        require(self.weight > 0, "weight", f"must be > 0, got {self.weight}")
        require(len(self.address) > 0, "address", "at least one HOST:PORT is required")
        for a in self.address:
            host, _, port = a.rpartition(":")
            require(
                a.startswith("dns:") or (bool(host) and port.isdigit()),
                "address",
                f"{a!r} is not HOST:PORT",
            )
        require(1 <= self.top_k <= 4096, "top_k", f"must be in [1, 4096], got {self.top_k}")
        require(self.timeout_s > 0, "timeout_s", f"must be > 0, got {self.timeout_s}")


LossVariant = Literal["lsm", "unnormalized", "stopgrad", "sampled_token"]
SupportChoice = Literal["teacher_topk", "student_topk", "teacher_topk_plus_sampled", "intersection"]


@dataclass(frozen=True)
class LossConfig:
    """Which loss the step minimises (DESIGN.md §1)."""

    variant: LossVariant = _f(  # noqa: RUF009 (_f returns a dataclasses.field)
        "lsm",
        "lsm (renormalised truncated reverse KL, the paper's fix) | unnormalized (kept to show "
        "the collapse) | stopgrad | sampled_token (the PPO-clipped baseline)",
    )
    renormalize: bool | None = _f(
        None,
        "stopgrad only: renormalise on the support (null: False, the library default); "
        "lsm is always renormalised, unnormalized never",
    )
    support: SupportChoice = _f(  # noqa: RUF009 (_f returns a dataclasses.field)
        "teacher_topk",
        "teacher_topk | student_topk (same tokenizer and a teacher with extra_ids only) | "
        "teacher_topk_plus_sampled | intersection (teacher top-K ∩ student top-K)",
    )
    gamma: float = _f(0.0, "sampled_token: discount of the return to go, in [0, 1]")
    clip: float = _f(0.2, "sampled_token: PPO clip ε, > 0")
    entropy_fraction: float = _f(
        1.0, "train only on this fraction of positions with the highest student entropy, (0, 1]"
    )
    fused: bool = _f(True, "support logits from hidden states (h·W[S]); False: full logits")
    chunk_size: int = _f(128, "positions per chunk of the fused path and of log Z, >= 1")

    def __post_init__(self) -> None:
        require(
            self.variant in typing.get_args(LossVariant),
            "loss.variant",
            f"must be one of {typing.get_args(LossVariant)}, got {self.variant!r}",
        )
        require(
            self.support in typing.get_args(SupportChoice),
            "loss.support",
            f"must be one of {typing.get_args(SupportChoice)}, got {self.support!r}",
        )
        require(
            not (self.variant == "lsm" and self.renormalize is False),
            "loss.renormalize",
            "lsm is renormalised by definition; use variant 'unnormalized'",
        )
        require(
            not (self.variant == "unnormalized" and self.renormalize is True),
            "loss.renormalize",
            "'unnormalized' cannot be renormalised; use variant 'lsm'",
        )
        require(0.0 <= self.gamma <= 1.0, "loss.gamma", f"must be in [0, 1], got {self.gamma}")
        require(self.clip > 0, "loss.clip", f"must be > 0, got {self.clip}")
        require(
            0.0 < self.entropy_fraction <= 1.0,
            "loss.entropy_fraction",
            f"must be in (0, 1], got {self.entropy_fraction}",
        )
        require(self.chunk_size >= 1, "loss.chunk_size", f"must be >= 1, got {self.chunk_size}")


@dataclass(frozen=True)
class MaskingConfig:
    """The tokenizer bridge's choices (`opd_client.align.AlignConfig`)."""

    special_policy: Literal["paper", "all_special", "none"] = _f(
        "paper",
        "paper (first reasoning marker and first end-of-turn per response) | all_special | none",
    )
    prefix_fallback: bool = _f(False, "map unmatched teacher tokens to their longest prefix")
    on_lossy: Literal["error", "mask"] = _f(
        "mask", "a response the teacher cannot encode losslessly: mask it, or stop with an error"
    )

    def __post_init__(self) -> None:
        for name, allowed in (
            ("special_policy", ("paper", "all_special", "none")),
            ("on_lossy", ("error", "mask")),
        ):
            value = getattr(self, name)
            require(value in allowed, f"masking.{name}", f"must be one of {allowed}, got {value!r}")


@dataclass(frozen=True)
class RolloutConfig:
    """How the student samples its responses."""

    top_p: float = _f(0.9, "nucleus sampling mass, (0, 1]; the paper needs 0.9")
    temperature: float = _f(1.0, "sampling temperature, > 0")
    max_new_tokens: int = _f(256, "response length cap in student tokens, >= 1")
    samples_per_prompt: int = _f(1, "responses sampled per prompt, >= 1")
    batch_size: int = _f(64, "sequences per generate call, >= 1")
    overlap_scoring: bool = _f(
        True,
        "send each batch of batch_size rollouts to the teacher while the next one is "
        "generated (one batch ahead, same parameters: the tokens and losses do not change)",
    )

    def __post_init__(self) -> None:
        require(0 < self.top_p <= 1, "rollout.top_p", f"must be in (0, 1], got {self.top_p}")
        require(self.temperature > 0, "rollout.temperature", f"must be > 0, got {self.temperature}")
        for name in ("max_new_tokens", "samples_per_prompt", "batch_size"):
            value = getattr(self, name)
            require(value >= 1, f"rollout.{name}", f"must be >= 1, got {value}")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and its learning-rate schedule."""

    lr: float = _f(1e-5, "peak learning rate, > 0")
    weight_decay: float = _f(0.0, "AdamW decoupled weight decay, >= 0")
    betas: tuple[float, float] = _f((0.9, 0.999), "AdamW betas, each in [0, 1)")
    eps: float = _f(1e-8, "AdamW epsilon, > 0")
    schedule: Literal["constant", "cosine"] = _f(
        "constant", "constant | cosine (to min_lr_ratio·lr at max_steps), after linear warmup"
    )
    warmup_steps: int = _f(0, "linear warmup from 0 over this many optimiser steps, >= 0")
    min_lr_ratio: float = _f(0.0, "cosine floor as a fraction of lr, [0, 1]")
    grad_clip: float = _f(1.0, "clip the global gradient norm to this, > 0 (the norm is logged)")

    def __post_init__(self) -> None:
        require(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        require(
            self.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {self.weight_decay}"
        )
        require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "optim.betas",
            f"must be two numbers in [0, 1), got {list(self.betas)}",
        )
        require(self.eps > 0, "optim.eps", f"must be > 0, got {self.eps}")
        require(
            self.schedule in ("constant", "cosine"),
            "optim.schedule",
            f"must be constant or cosine, got {self.schedule!r}",
        )
        require(
            self.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {self.warmup_steps}"
        )
        require(
            0 <= self.min_lr_ratio <= 1,
            "optim.min_lr_ratio",
            f"must be in [0, 1], got {self.min_lr_ratio}",
        )
        require(self.grad_clip > 0, "optim.grad_clip", f"must be > 0, got {self.grad_clip}")


@dataclass(frozen=True)
class CheckpointConfig:
    """Where and how often the run is saved."""

    dir: str | None = _f(None, "checkpoint directory; null: <run_dir>/checkpoints")
    interval: int = _f(50, "save every this many optimiser steps (and at the end), >= 1")
    keep_last: int = _f(3, "complete checkpoints kept, >= 1")

    def __post_init__(self) -> None:
        require(self.interval >= 1, "checkpoint.interval", f"must be >= 1, got {self.interval}")
        require(self.keep_last >= 1, "checkpoint.keep_last", f"must be >= 1, got {self.keep_last}")


@dataclass(frozen=True)
class EvalConfig:
    """Held-out accuracy: the student's own responses, checked by a verifier."""

    prompts: str | None = _f(
        None, "JSONL in the prompts format, every line with an 'answer'; null: no evaluation"
    )
    interval: int = _f(0, "evaluate every this many steps (and before step 0 and at the end), >= 0")
    max_new_tokens: int = _f(256, "response length cap in student tokens, >= 1")
    batch_size: int = _f(64, "sequences per generate call, >= 1")
    decoding: Literal["greedy", "top_p"] = _f(
        "greedy", "greedy (deterministic, the default) | top_p (rollout.top_p, a fixed seed)"
    )
    verifier: str = _f(
        "opd_client.train.task:exact_match",
        "module:function taking (prompt, response, answer) and returning a bool",
    )

    def __post_init__(self) -> None:
        require(self.interval >= 0, "eval.interval", f"must be >= 0, got {self.interval}")
        for name in ("max_new_tokens", "batch_size"):
            value = getattr(self, name)
            require(value >= 1, f"eval.{name}", f"must be >= 1, got {value}")
        require(
            self.decoding in ("greedy", "top_p"),
            "eval.decoding",
            f"must be greedy or top_p, got {self.decoding!r}",
        )
        require(
            self.verifier.count(":") == 1 and all(self.verifier.split(":")),
            "eval.verifier",
            f"must be module:function, got {self.verifier!r}",
        )


@dataclass(frozen=True)
class TrainConfig:
    """One OPD run."""

    student: str = _f("", "the student: a save_pretrained causal LM directory with tokenizer")
    teachers: tuple[TeacherConfig, ...] = _f((), "the teacher services; exactly one for now")
    prompts: str = _f(
        "",
        "JSONL: one object per line with 'messages' (chat) or 'prompt' (text), "
        "optional 'answer' and 'task'",
    )
    run_dir: str = _f("", "metrics.jsonl, checkpoints and logs go here")
    loss: LossConfig = field(default_factory=LossConfig, metadata={"doc": "the loss"})
    masking: MaskingConfig = field(
        default_factory=MaskingConfig, metadata={"doc": "the tokenizer bridge's masking policy"}
    )
    rollout: RolloutConfig = field(
        default_factory=RolloutConfig, metadata={"doc": "student sampling"}
    )
    optim: OptimConfig = field(
        default_factory=OptimConfig, metadata={"doc": "optimiser and schedule"}
    )
    checkpoint: CheckpointConfig = field(
        default_factory=CheckpointConfig, metadata={"doc": "checkpoints"}
    )
    eval: EvalConfig = field(
        default_factory=EvalConfig, metadata={"doc": "held-out accuracy during the run"}
    )
    device: str = _f("cpu", "cpu | cuda | cuda:N")
    precision: Literal["fp32", "bf16"] = _f("fp32", "fp32 | bf16 (autocast; weights stay fp32)")
    gradient_checkpointing: bool = _f(False, "recompute activations in backward to save memory")
    prompts_per_step: int = _f(8, "prompts per optimiser step, >= 1")
    grad_accumulation: int = _f(
        1, "micro-batches per optimiser step, 1..prompts_per_step·samples_per_prompt"
    )
    max_steps: int = _f(100, "optimiser steps of the whole run, >= 1")
    seed: int = _f(0, "seeds data order, sampling and everything else, >= 0")
    torch_threads: int = _f(0, "CPU threads for torch; 0: torch's default")
    teacher_unavailable_timeout_s: float = _f(
        1800.0, "wait this long (seconds) for a teacher that is gone, then checkpoint and exit 3"
    )
    progress: bool = _f(True, "show a tqdm progress bar on stderr")
    tensorboard: bool = _f(True, "also write metrics and evals as TensorBoard scalars")
    client_name: str = _f(
        "",
        "this job's name in the teacher's x-opd-client metadata (its fair share and metrics "
        "are per client); empty: opd-train:<name of run_dir>",
    )
    default_teacher: str = _f(
        "",
        "the teacher of prompts whose task no teacher lists (and of prompts without a task); "
        "empty: the only teacher when there is one, otherwise such a prompt is an error",
    )
    requeue_after_s: float = _f(
        60.0,
        "several teachers: how long a step waits for one that stopped answering before its "
        "prompts are put back in the queue (the other teachers' responses train meanwhile), > 0",
    )

    def __post_init__(self) -> None:
        for name in ("student", "prompts", "run_dir"):
            require(bool(getattr(self, name)), name, "required")
        self._check_teachers()
        require(
            self.device == "cpu" or self.device.startswith("cuda"),
            "device",
            f"must be cpu, cuda or cuda:N, got {self.device!r}",
        )
        require(
            self.precision in ("fp32", "bf16"),
            "precision",
            f"must be fp32 or bf16, got {self.precision!r}",
        )
        for name in ("prompts_per_step", "max_steps"):
            require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        rollouts = self.prompts_per_step * self.rollout.samples_per_prompt
        require(
            1 <= self.grad_accumulation <= rollouts,
            "grad_accumulation",
            f"must be in [1, {rollouts}] (rollouts per step), got {self.grad_accumulation}",
        )
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        require(self.torch_threads >= 0, "torch_threads", f"must be >= 0, got {self.torch_threads}")
        require(
            self.teacher_unavailable_timeout_s > 0,
            "teacher_unavailable_timeout_s",
            f"must be > 0, got {self.teacher_unavailable_timeout_s}",
        )
        if self.loss.support == "student_topk" and self.loss.variant == "sampled_token":
            raise ConfigError("loss.support: sampled_token uses no support; leave teacher_topk")

    def _check_teachers(self) -> None:
        require(len(self.teachers) >= 1, "teachers", "at least one teacher is required")
        names = [t.name for t in self.teachers]
        for i, name in enumerate(names):
            require(
                name not in names[:i],
                f"teachers[{i}].name",
                f"two teachers are named {name!r}; give each its own name",
            )
        owner: dict[str, str] = {}
        for i, t in enumerate(self.teachers):
            for task in t.tasks:
                require(
                    task not in owner,
                    f"teachers[{i}].tasks",
                    f"task {task!r} is already routed to teacher {owner.get(task)!r}",
                )
                owner[task] = t.name
        require(
            not self.default_teacher or self.default_teacher in names,
            "default_teacher",
            f"{self.default_teacher!r} is not one of the teachers {names}",
        )
        require(
            self.requeue_after_s > 0,
            "requeue_after_s",
            f"must be > 0, got {self.requeue_after_s}",
        )

    def teacher_for(self, task: str | None) -> int | None:
        """Index of the teacher that scores prompts of `task`, or None when none does."""
        for i, t in enumerate(self.teachers):
            if task is not None and task in t.tasks:
                return i
        if self.default_teacher:
            return [t.name for t in self.teachers].index(self.default_teacher)
        return 0 if len(self.teachers) == 1 else None

    @property
    def teacher_client_name(self) -> str:
        return self.client_name or f"opd-train:{Path(self.run_dir).name}"

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint.dir or Path(self.run_dir) / "checkpoints")


# Paths in a YAML file are relative to that file; paths given with --set to the cwd.
PATH_FIELDS = (
    "student",
    "prompts",
    "run_dir",
    "checkpoint.dir",
    "eval.prompts",
    "teachers.*.auth_token_file",
)
# Fields a resumed run may change without invalidating its checkpoints.
RESUMABLE_FIELDS = (
    "eval",  # evaluation reads the model and draws from its own generator
    "max_steps",
    "progress",
    "tensorboard",
    "torch_threads",
    "client_name",
    "teacher_unavailable_timeout_s",
    "checkpoint.interval",
    "checkpoint.keep_last",
    "rollout.overlap_scoring",
    "teachers.*.address",
    "teachers.*.auth_token_file",
    "teachers.*.timeout_s",
    "requeue_after_s",
)
