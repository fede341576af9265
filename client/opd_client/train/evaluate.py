"""Held-out accuracy of a student: its own responses to eval prompts, checked by a verifier.

Why this module exists: the question a user asks of a distillation run is "did the student
get better at the task?", so the loop measures it before step 0, every `eval.interval`
steps and at the end, and `opd-train eval` measures any checkpoint the same way. Decoding
is greedy by default, so two evaluations of the same weights give the same responses; the
`top_p` option samples under a fixed seed inside a forked RNG, so evaluation never moves
the training run's random stream (which is what keeps resume exact).

A verifier is any `module:function` taking (prompt, response, answer) and returning a bool;
the built-in one is the addition task's exact match on the text after `</think>`.

What it does not know: the teacher, the bridge and the loss.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig

from opd_client.train.config import ConfigError, EvalConfig, TrainConfig
from opd_client.train.rollout import PromptRecord, load_prompts

Verifier = Callable[[Any, str, str], bool]
EVAL_FILE = "eval.jsonl"
_EVAL_SEED = 1234


def load_verifier(spec: str) -> Verifier:
    """The function named by `module:function`, or a ConfigError naming `eval.verifier`."""
    module_name, _, attr = spec.partition(":")
    try:
        func = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"eval.verifier: cannot load {spec!r} ({err})") from None
    if not callable(func):
        raise ConfigError(f"eval.verifier: {spec!r} is not callable")
    return func  # type: ignore[no-any-return]


def stop_ids_for(roles: Mapping[str, int], hf_tokenizer: Any) -> list[int]:
    """The ids that end a response: the side's eos and end-of-turn roles and the
    tokenizer's eos."""
    ids = {int(roles[r]) for r in ("eos", "end_of_turn") if r in roles}
    if hf_tokenizer.eos_token_id is not None:
        ids.add(int(hf_tokenizer.eos_token_id))
    return sorted(ids)


@torch.no_grad()
def generate_ids(
    model: Any,
    prompt_ids: Sequence[Sequence[int]],
    stop_ids: Sequence[int],
    pad_id: int,
    max_new_tokens: int,
    batch_size: int = 64,
    top_p: float | None = None,
) -> list[list[int]]:
    """Responses (ids up to, not including, the first stop token), left-padded batches.
    `top_p` None: greedy; otherwise nucleus sampling at temperature 1 from torch's RNG."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    stops = {int(s) for s in stop_ids}
    # An explicit config: the model's own generation_config (a sampling default) is ignored.
    sampling = {"top_p": top_p, "top_k": 0, "temperature": 1.0} if top_p else {}
    config = GenerationConfig(
        do_sample=bool(top_p),
        max_new_tokens=max_new_tokens,
        eos_token_id=sorted(stops),
        pad_token_id=pad_id,
        use_cache=True,
        **sampling,
    )
    out: list[list[int]] = []
    try:
        for start in range(0, len(prompt_ids), batch_size):
            chunk = prompt_ids[start : start + batch_size]
            width = max(len(p) for p in chunk)
            ids_BL = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            attention_BL = torch.zeros((len(chunk), width), dtype=torch.long)
            for b, ids in enumerate(chunk):
                ids_BL[b, width - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
                attention_BL[b, width - len(ids) :] = 1
            generated_BL = model.generate(
                input_ids=ids_BL.to(device),
                attention_mask=attention_BL.to(device),
                generation_config=config,
            )[:, width:].cpu()
            for row in generated_BL.tolist():
                cut = next((i for i, tok in enumerate(row) if tok in stops), len(row))
                out.append(row[:cut])
    finally:
        model.train(was_training)
    return out


@dataclass(frozen=True)
class EvalResult:
    """Accuracy over `n` prompts, with the mean response length in tokens; `by_task`:
    task -> (correct, n) for the prompts that name a task."""

    accuracy: float
    n: int
    correct: int
    response_len_mean: float
    samples: tuple[tuple[str, str, bool], ...]  # (answer, response, correct) of the first few
    by_task: dict[str, tuple[int, int]] = field(default_factory=dict)

    def to_record(self, step: int) -> dict[str, Any]:
        record: dict[str, Any] = {
            "step": step,
            "eval_accuracy": self.accuracy,
            "eval_n": self.n,
            "eval_correct": self.correct,
            "eval_response_len_mean": self.response_len_mean,
        }
        if self.by_task:
            record["eval_accuracy_by_task"] = {
                task: correct / n for task, (correct, n) in sorted(self.by_task.items())
            }
        return record


def evaluate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    answers: Sequence[str],
    prompt_ids: Sequence[Sequence[int]],
    stop_ids: Sequence[int],
    pad_id: int,
    cfg: EvalConfig,
    top_p: float,
    verifier: Verifier,
    tasks: Sequence[str | None] | None = None,
) -> EvalResult:
    """Generates one response per prompt (`cfg.decoding`) and counts the verifier's yes,
    overall and per task when `tasks` (one per prompt, None for none) is given."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_EVAL_SEED)
        responses_ids = generate_ids(
            model,
            prompt_ids,
            stop_ids,
            pad_id,
            cfg.max_new_tokens,
            cfg.batch_size,
            top_p if cfg.decoding == "top_p" else None,
        )
    texts = [tokenizer.decode(r, skip_special_tokens=False) for r in responses_ids]
    verdicts = [bool(verifier(p, t, a)) for p, t, a in zip(prompts, texts, answers, strict=True)]
    n = len(verdicts)
    by_task: dict[str, tuple[int, int]] = {}
    for task, ok in zip(tasks or [None] * n, verdicts, strict=True):
        if task is not None:
            correct, seen = by_task.get(task, (0, 0))
            by_task[task] = (correct + int(ok), seen + 1)
    return EvalResult(
        accuracy=sum(verdicts) / n if n else 0.0,
        n=n,
        correct=sum(verdicts),
        response_len_mean=sum(len(r) for r in responses_ids) / max(n, 1),
        samples=tuple(zip(answers[:5], texts[:5], verdicts[:5], strict=True)),
        by_task=by_task,
    )


@dataclass(frozen=True)
class EvalSet:
    """The eval prompts rendered for the student, and the verifier that checks answers."""

    records: list[PromptRecord]
    prompt_ids: list[list[int]]
    verifier: Verifier


def load_eval_set(config: TrainConfig, render: Any) -> EvalSet | None:
    """`config.eval.prompts` parsed (every line needs an 'answer') and rendered by
    `render` (prompt -> student ids); None when the config has no eval prompts."""
    if config.eval.prompts is None:
        return None
    try:
        records = load_prompts(config.eval.prompts)
    except ConfigError as err:
        raise ConfigError(f"eval.{err}") from None
    for r in records:
        if r.answer is None:
            raise ConfigError(f"eval.prompts: line {r.line}: needs an 'answer' to verify")
    verifier = load_verifier(config.eval.verifier)
    return EvalSet(records, [render(r.prompt) for r in records], verifier)


def evaluate_checkpoint(config: TrainConfig, checkpoint: Path | None) -> EvalResult:
    """`opd-train eval`: the config's eval set on a checkpoint's student (or the config's
    student when `checkpoint` is None), without a teacher."""
    from transformers import AutoModelForCausalLM

    from opd_client.align import AlignConfig, TokenizerSide
    from opd_client.align.errors import AlignError
    from opd_client.align.special import find_roles
    from opd_client.train.checkpoint import resolve_checkpoint

    if config.eval.prompts is None:
        raise ConfigError("eval.prompts: required for opd-train eval")
    model_dir = resolve_checkpoint(checkpoint).model_dir if checkpoint else Path(config.student)
    try:
        side = TokenizerSide.load(config.student)
    except AlignError as err:
        raise ConfigError(f"student: {err}") from None
    eval_set = load_eval_set(config, side.render_prompt)
    assert eval_set is not None
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = model.to(torch.device(config.device))  # type: ignore[arg-type]
    roles = find_roles(side, AlignConfig(special_policy=config.masking.special_policy))
    hf = side.hf
    pad_id = hf.pad_token_id if hf.pad_token_id is not None else hf.eos_token_id
    return evaluate(
        model,
        hf,
        [r.prompt for r in eval_set.records],
        [str(r.answer) for r in eval_set.records],
        eval_set.prompt_ids,
        stop_ids_for(roles, hf),
        pad_id,
        config.eval,
        config.rollout.top_p,
        eval_set.verifier,
    )
