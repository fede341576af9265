"""The two-task study's models: a sorting teacher and a student of both tasks.

Why this module exists: one student learning from several teachers (README "Several
teachers") needs a second teacher, expert in a second task, whose tokenizer differs from
the first teacher's; and a student that is partly competent at both tasks, so each
teacher has something to teach. With the addition teacher of `demo_models.py` these
make the multi-teacher demo (`python -m opd_client.train.demo --multi`) and the routing
study (`benchmarks/method.py --multi`). Two models come out, `save_pretrained`
directories like the demo's:

- sorting teacher: a 4-layer Llama (hidden 128, 4 heads of 32) supervised on the sorting
  task (`task_sort.py`) for 500 steps, near-perfect on held-out problems, with its own
  byte-level BPE (448 entries, its own merges) and a Llama-3-style template
  (`<|start_header_id|>…<|end_header_id|>`, `<|eot_id|>`; `<think>`, `</think>` as
  special tokens) — unlike the addition teacher's ChatML;
- two-task student: a 2-layer Llama with the demo cross student's `[INST]` recipe (no
  `<think>` token), its BPE trained on both tasks' text, briefly supervised on a mix of
  the two (200 steps, three addition problems to one sorting problem) so it is partly
  competent at each (about half right on both).

The tokenizer, supervision and decoding helpers are `demo_models.py`'s; what is here is
only what those hard-wire to the addition task (the tokenizer corpus, the training
tensors, the build). Builds are seeded and cached under `OPD_CACHE_DIR` keyed by a hash
of this file, `task_sort.py` and the demo modules it builds on; each directory's
`opd_demo.json` holds held-out accuracy per task and the build time.

What it does not know: the trainer and the teacher service.

    python -m opd_client.train.multitask_models   # builds both; prints dirs and accuracy
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from opd_client.cache import build_once, cache_dir
from opd_client.train import demo_models, task, task_sort
from opd_client.train.demo_models import (
    INFO_FILE,
    STUDENT_TOKENIZER,
    ModelRecipe,
    TokenizerRecipe,
    _end_ids,
    _prompt_ids,
    _supervise,
    generate_responses,
)
from opd_client.train.task import Record, Split


@dataclass(frozen=True)
class TaskSpec:
    """One synthetic task: its name (the JSONL `task`), problems and reference responses."""

    name: str
    make_records: Callable[[int, Split, int], list[Record]]
    reference_for: Callable[[Mapping[str, Any]], str]


ADDITION = TaskSpec(task.TASK_NAME, task.make_records, task.reference_for)
SORTING = TaskSpec(task_sort.TASK_NAME, task_sort.make_records, task_sort.reference_for)
TASKS: tuple[TaskSpec, ...] = (ADDITION, SORTING)


def task_spec(name: str) -> TaskSpec:
    """The task named `name` ("addition" or "sorting")."""
    for spec in TASKS:
        if spec.name == name:
            return spec
    raise ValueError(f"unknown task {name!r}; choose from {[t.name for t in TASKS]}")


def mixed_records(
    n_per_task: int, split: Split, seed: int = 0, tasks: Sequence[str] | None = None
) -> list[Record]:
    """`n_per_task` problems of each task, interleaved (a prefix is balanced), each with
    its `task`. Deterministic."""
    names = list(tasks) if tasks is not None else [t.name for t in TASKS]
    per_task = [
        [{**r, "task": name} for r in task_spec(name).make_records(n_per_task, split, seed)]
        for name in names
    ]
    return [r for group in zip(*per_task, strict=True) for r in group]


def weighted_records(
    n: int, split: Split, weights: Mapping[str, int], seed: int = 0
) -> list[Record]:
    """About `n` problems in rounds of `weights[task]` problems of each task (3:1 gives
    three addition problems for each sorting one), each with its `task`. Deterministic."""
    if not weights or any(w < 1 for w in weights.values()):
        raise ValueError(f"weights must be >= 1 per task, got {dict(weights)}")
    rounds = max(1, -(-n // sum(weights.values())))
    pools = {
        name: [{**r, "task": name} for r in task_spec(name).make_records(rounds * w, split, seed)]
        for name, w in weights.items()
    }
    return [
        r
        for i in range(rounds)
        for name, w in weights.items()
        for r in pools[name][i * w : (i + 1) * w]
    ]


def reference_for(record: Mapping[str, Any]) -> str:
    """The reference response for a record of either task (by its `task`)."""
    return task_spec(str(record.get("task", task.TASK_NAME))).reference_for(record)


SORT_TEACHER_TOKENIZER = TokenizerRecipe(
    vocab_size=448,
    special_tokens=(
        "<|pad|>",
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
        "<think>",
        "</think>",
    ),
    chat_template=(
        "{{ bos_token }}{% for message in messages %}"
        "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
        "{{ message['content'] }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
        "{% endif %}"
    ),
    pad="<|pad|>",
    bos="<|begin_of_text|>",
    eos="<|end_of_text|>",
    end_of_turn="<|eot_id|>",
    corpus_seed=3,
)
# The demo cross student's recipe (`[INST]` template, `<s>`/`</s>`, no `<think>` token);
# its BPE is trained on both tasks, so its merges differ from the demo student's too.
MULTI_STUDENT_TOKENIZER = STUDENT_TOKENIZER

SORT_TEACHER_MODEL = ModelRecipe(
    num_layers=4, hidden=128, intermediate=512, train_steps=500, lr=3e-3
)
MULTI_STUDENT_MODEL = ModelRecipe(
    num_layers=2, hidden=128, intermediate=256, train_steps=200, lr=3e-3
)
# The student's supervised mix, problems per round: sorting is the easier task for a
# 2-layer model, so it sees less of it; 200 steps of 3:1 leave it about half right on each.
MULTI_STUDENT_MIX: Mapping[str, int] = MappingProxyType({"addition": 3, "sorting": 1})
_HEAD_DIM = 32  # vLLM's CPU attention needs head_dim >= 32
_POOL = 20000  # distinct training problems (all tasks together) tokenised once per build
_EVAL = 300  # held-out problems per task scored at the end of a build


def tokenizer_corpus(recipe: TokenizerRecipe, tasks: Sequence[str], lines: int = 3000) -> list[str]:
    """Rendered conversations of `tasks` (`lines` in all) plus made-up words, as
    `demo_models.tokenizer_corpus` does for addition alone."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(recipe.corpus_seed)
    render = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.BPE()), chat_template=recipe.chat_template
    )
    out = []
    per_task = max(1, lines // len(tasks))
    for record in mixed_records(per_task, "train", seed=recipe.corpus_seed, tasks=tasks):
        chat = [*record["messages"], {"role": "assistant", "content": reference_for(record)}]
        text = str(render.apply_chat_template(chat, tokenize=False, bos_token=recipe.bos))
        for marker in recipe.special_tokens:
            text = text.replace(marker, " ")
        out.append(text)
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    for _ in range(lines):
        words = ["".join(rng.choices(syllables, k=rng.randint(1, 3))) for _ in range(8)]
        out.append(" ".join(words) + ".")
    return out


def build_tokenizer(recipe: TokenizerRecipe, tasks: Sequence[str]) -> Any:
    """`demo_models.build_tokenizer`'s byte-level BPE (digits one per token), trained on
    `tasks`' text. Deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.vocab_size,
        special_tokens=list(recipe.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(tokenizer_corpus(recipe, tasks), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=recipe.pad,
        bos_token=recipe.bos,
        eos_token=recipe.eos,
        chat_template=recipe.chat_template,
        clean_up_tokenization_spaces=False,
    )


def _training_tensors(tokenizer: Any, recipe: TokenizerRecipe, records: Sequence[Any]) -> Any:
    """input ids [N, L] (right-padded), labels [N, L] (-100 outside responses), lengths [N]."""
    import torch

    prompts = _prompt_ids(tokenizer, records)
    responses = tokenizer([reference_for(r) for r in records], add_special_tokens=False)
    end = tokenizer.convert_tokens_to_ids(recipe.end_of_turn)
    rows = [(p, [*r, end]) for p, r in zip(prompts, responses["input_ids"], strict=True)]
    L = max(len(p) + len(r) for p, r in rows)
    ids_NL = torch.full((len(rows), L), tokenizer.pad_token_id, dtype=torch.long)
    labels_NL = torch.full((len(rows), L), -100, dtype=torch.long)
    for n, (p, r) in enumerate(rows):
        ids_NL[n, : len(p) + len(r)] = torch.tensor(p + r)
        labels_NL[n, len(p) : len(p) + len(r)] = torch.tensor(r)
    lengths_N = torch.tensor([len(p) + len(r) for p, r in rows])
    return ids_NL, labels_NL, lengths_N


def accuracy_by_task(
    model: Any, tokenizer: Any, eval_records: int, seed: int = 0
) -> dict[str, float]:
    """Greedy held-out exact-match accuracy on `eval_records` problems of each task."""
    out = {}
    for spec in TASKS:
        heldout = spec.make_records(eval_records, "heldout", seed)
        out[spec.name] = task.accuracy(heldout, generate_responses(model, tokenizer, heldout))
    return out


def _build(
    out_dir: Path,
    role: str,
    tok_recipe: TokenizerRecipe,
    model_recipe: ModelRecipe,
    mix: Mapping[str, int],
    train_steps: int | None,
    seed: int,
    eval_records: int,
) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    began = time.perf_counter()
    torch.manual_seed(seed)
    tasks = list(mix)
    tokenizer = build_tokenizer(tok_recipe, tasks)
    end_ids = _end_ids(tokenizer, tok_recipe)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=model_recipe.hidden,
        intermediate_size=model_recipe.intermediate,
        num_hidden_layers=model_recipe.num_layers,
        num_attention_heads=model_recipe.hidden // _HEAD_DIM,
        num_key_value_heads=model_recipe.hidden // _HEAD_DIM,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=end_ids,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = end_ids
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    steps = model_recipe.train_steps if train_steps is None else train_steps
    # A short build needs fewer problems (a prefix of a longer build's, as in demo_models).
    records = weighted_records(min(_POOL, model_recipe.batch * max(1, steps)), "train", mix, seed)
    tensors = _training_tensors(tokenizer, tok_recipe, records)
    final_loss = _supervise(model, tensors, model_recipe, steps, seed, f"multitask {role}")
    by_task = accuracy_by_task(model, tokenizer, eval_records, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    info = {
        "role": role,
        "tasks_trained": dict(mix),
        "train_steps": steps,
        "final_train_loss": round(final_loss, 4),
        # The mean over the tasks it was trained on (what `demo.py` prints per model).
        "heldout_accuracy": sum(by_task[t] for t in tasks) / len(tasks),
        "heldout_accuracy_by_task": by_task,
        "heldout_problems": eval_records,
        "build_seconds": round(time.perf_counter() - began, 1),
        "torch_threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return out_dir


def build_sort_teacher(
    out_dir: Path, train_steps: int | None = None, seed: int = 0, eval_records: int = _EVAL
) -> Path:
    """Train and save the sorting teacher into `out_dir` (`train_steps` None: the recipe's)."""
    return _build(
        out_dir,
        "sort-teacher",
        SORT_TEACHER_TOKENIZER,
        SORT_TEACHER_MODEL,
        {task_sort.TASK_NAME: 1},
        train_steps,
        seed,
        eval_records,
    )


def build_multi_student(
    out_dir: Path, train_steps: int | None = None, seed: int = 0, eval_records: int = _EVAL
) -> Path:
    """Train and save the two-task student (briefly, on `MULTI_STUDENT_MIX`)."""
    return _build(
        out_dir,
        "multi-student",
        MULTI_STUDENT_TOKENIZER,
        MULTI_STUDENT_MODEL,
        MULTI_STUDENT_MIX,
        train_steps,
        seed + 1,
        eval_records,
    )


def source_key() -> str:
    """Hash of the code that decides these models: this file, the sorting task, and the
    demo modules whose helpers it uses."""
    digest = hashlib.sha256()
    for module_file in (__file__, task_sort.__file__, demo_models.__file__, task.__file__):
        digest.update(Path(module_file).read_bytes())
    return digest.hexdigest()[:12]


def _ensure(name: str, build: Callable[[Path], object], root: Path | None) -> Path:
    return build_once((root or cache_dir()) / f"{name}-{source_key()}", build, INFO_FILE)


def ensure_sort_teacher(root: Path | None = None) -> Path:
    """The cached sorting teacher directory, built first if this code has not built it."""
    return _ensure("sort-teacher", build_sort_teacher, root)


def ensure_multi_student(root: Path | None = None) -> Path:
    """The cached two-task student directory, built first if needed."""
    return _ensure("multi-student", build_multi_student, root)


def describe(name: str, path: Path) -> str:
    """One line: the model, its held-out accuracy per task and its build time."""
    info = demo_models.read_info(path)
    by_task = info.get("heldout_accuracy_by_task") or {task.TASK_NAME: info["heldout_accuracy"]}
    accuracies = ", ".join(f"{t} {a:.1%}" for t, a in by_task.items())
    return (
        f"{name:14s} {path}  held-out accuracy {accuracies} (n={info['heldout_problems']} "
        f"per task)  build_seconds={info['build_seconds']}"
    )


def main() -> int:
    for name, ensure in (
        ("sort-teacher", ensure_sort_teacher),
        ("multi-student", ensure_multi_student),
    ):
        print(describe(name, ensure()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
