"""The demo's teacher and students, built locally from the addition task (`task.py`).

Why this module exists: the demo and the method benchmark need a teacher that solves a
task, a student that is only partly competent at it, and a student whose tokenizer and
chat template differ from the teacher's (so the bridge's alignment and the paper's
special-token masking are exercised) — all without a model hub (DESIGN.md §4). Three
models come out, each a `save_pretrained` directory that `AutoModelForCausalLM` and
`AutoTokenizer` load:

- teacher: a 4-layer Llama (hidden 128, 4 heads of 32) with a byte-level BPE tokenizer
  (ChatML template; `<|im_start|>`, `<|im_end|>`, `<think>`, `</think>`, `<|bos|>`,
  `<|eos|>`, `<|pad|>` as special tokens), supervised on the task's reference responses;
- cross student: a 2-layer Llama with a different byte-level BPE (other vocabulary size
  and merges, an `[INST]`-style template with `<s>`/`</s>`, and no `<think>` token: it
  spells the markers in pieces `<`, `think`, `>`), trained briefly;
- same student: the teacher's tokenizer on the small model, trained briefly.

Both tokenizers split digits one per token (as Qwen2 and Llama 2 do), so the arithmetic is
learnable; they differ on words, templates and reasoning markers. Builds are seeded and
cached under `OPD_CACHE_DIR` (default `.cache/opd`) keyed by a hash of this file and
`task.py`; each directory holds `opd_demo.json` with its held-out accuracy and build time.
Supervision computes the loss on the response (and its end-of-turn token) only.

What it does not know: the trainer and the teacher service.

    python -m opd_client.train.demo_models     # builds all three; prints dirs and accuracy
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from opd_client.cache import build_once, cache_dir
from opd_client.train import task

StudentKind = Literal["cross", "same"]
INFO_FILE = "opd_demo.json"


@dataclass(frozen=True)
class TokenizerRecipe:
    """One side's tokenizer: BPE vocabulary size, special tokens and chat template."""

    vocab_size: int
    special_tokens: tuple[str, ...]
    chat_template: str
    pad: str
    bos: str
    eos: str
    end_of_turn: str
    corpus_seed: int


TEACHER_TOKENIZER = TokenizerRecipe(
    vocab_size=512,
    special_tokens=(
        "<|pad|>",
        "<|bos|>",
        "<|eos|>",
        "<|im_start|>",
        "<|im_end|>",
        "<think>",
        "</think>",
    ),
    chat_template=(
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{{ message['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    pad="<|pad|>",
    bos="<|bos|>",
    eos="<|eos|>",
    end_of_turn="<|im_end|>",
    corpus_seed=1,
)
STUDENT_TOKENIZER = TokenizerRecipe(
    vocab_size=384,
    special_tokens=("<pad>", "<s>", "</s>"),
    chat_template=(
        "{{ bos_token }}{% for message in messages %}"
        "{% if message['role'] == 'user' %}[INST] {{ message['content'] }} [/INST]"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] }}</s>"
        "{% else %}{{ message['content'] }}\n{% endif %}{% endfor %}"
    ),
    pad="<pad>",
    bos="<s>",
    eos="</s>",
    end_of_turn="</s>",
    corpus_seed=2,
)


@dataclass(frozen=True)
class ModelRecipe:
    """One model: Llama shape and supervised-training schedule."""

    num_layers: int
    hidden: int
    intermediate: int
    train_steps: int
    lr: float
    batch: int = 64


TEACHER_MODEL = ModelRecipe(num_layers=4, hidden=128, intermediate=512, train_steps=500, lr=3e-3)
STUDENT_MODEL = ModelRecipe(num_layers=2, hidden=128, intermediate=256, train_steps=300, lr=3e-3)
_HEAD_DIM = 32  # vLLM's CPU attention needs head_dim >= 32
_POOL = 20000  # distinct training problems tokenised once per build
_EVAL = 300  # held-out problems scored at the end of a build


def tokenizer_corpus(recipe: TokenizerRecipe, lines: int = 3000) -> list[str]:
    """Rendered task conversations plus made-up words; `corpus_seed` makes each side's
    merges (and so its vocabulary) differ."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(recipe.corpus_seed)
    render = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.BPE()), chat_template=recipe.chat_template
    )
    out = []
    for record in task.make_records(lines, "train", seed=recipe.corpus_seed):
        chat = [*record["messages"], {"role": "assistant", "content": task.reference_for(record)}]
        text = str(render.apply_chat_template(chat, tokenize=False, bos_token=recipe.bos))
        for marker in recipe.special_tokens:
            text = text.replace(marker, " ")
        out.append(text)
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    for _ in range(lines):
        words = ["".join(rng.choices(syllables, k=rng.randint(1, 3))) for _ in range(8)]
        out.append(" ".join(words) + ".")
    return out


def build_tokenizer(recipe: TokenizerRecipe) -> Any:
    """A byte-level BPE fast tokenizer (digits split one per token) with `recipe`'s
    special tokens and chat template. Deterministic."""
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
    backend.train_from_iterator(tokenizer_corpus(recipe), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=recipe.pad,
        bos_token=recipe.bos,
        eos_token=recipe.eos,
        chat_template=recipe.chat_template,
        clean_up_tokenization_spaces=False,
    )


def _end_ids(tokenizer: Any, recipe: TokenizerRecipe) -> list[int]:
    ids = [tokenizer.convert_tokens_to_ids(recipe.end_of_turn), tokenizer.eos_token_id]
    return list(dict.fromkeys(int(i) for i in ids))


def _prompt_ids(tokenizer: Any, records: Sequence[Mapping[str, Any]]) -> list[list[int]]:
    texts = [
        tokenizer.apply_chat_template(r["messages"], add_generation_prompt=True, tokenize=False)
        for r in records
    ]
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _training_tensors(tokenizer: Any, recipe: TokenizerRecipe, records: Sequence[Any]) -> Any:
    """input ids [N, L] (right-padded), labels [N, L] (-100 outside responses), lengths [N]."""
    import torch

    prompts = _prompt_ids(tokenizer, records)
    responses = tokenizer([task.reference_for(r) for r in records], add_special_tokens=False)
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


def _supervise(
    model: Any, tensors: Any, recipe: ModelRecipe, steps: int, seed: int, desc: str
) -> float:
    """AdamW with warm-up and cosine decay on random batches drawn by one generator.
    Right padding needs no attention mask: pads only follow real tokens and carry no loss."""
    import torch
    from tqdm import tqdm

    gen = torch.Generator().manual_seed(seed)
    ids_NL, labels_NL, lengths_N = tensors
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.98))
    warmup = max(1, min(50, steps // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            min(1.0, (s + 1) / warmup)
            * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, s / max(1, steps)))))
        ),
    )
    model.train()
    loss = torch.zeros(())
    bar = tqdm(range(steps), desc=desc, mininterval=2.0, leave=False)
    for _ in bar:
        idx_B = torch.randint(0, ids_NL.shape[0], (recipe.batch,), generator=gen)
        width = int(lengths_N[idx_B].max())
        out = model(input_ids=ids_NL[idx_B, :width], labels=labels_NL[idx_B, :width])
        loss = out.loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    return float(loss.item())


def generate_responses(
    model: Any,
    tokenizer: Any,
    records: Sequence[Mapping[str, Any]],
    max_new_tokens: int = 48,
    batch_size: int = 128,
) -> list[str]:
    """Greedy responses (text up to the first end-of-turn or eos token, special tokens
    kept so `</think>` survives), batched with left padding."""
    import torch

    end_ids = model.generation_config.eos_token_id
    end_ids = set(end_ids if isinstance(end_ids, list) else [end_ids])
    prompts = _prompt_ids(tokenizer, records)
    pad = tokenizer.pad_token_id
    out: list[str] = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            L = max(len(p) for p in chunk)
            ids_BL = torch.tensor([[pad] * (L - len(p)) + p for p in chunk])
            mask_BL = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in chunk])
            gen_BL = model.generate(
                input_ids=ids_BL,
                attention_mask=mask_BL,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=sorted(end_ids),
            )[:, L:]
            for row in gen_BL.tolist():
                cut = next((i for i, t in enumerate(row) if t in end_ids), len(row))
                out.append(tokenizer.decode(row[:cut], skip_special_tokens=False))
    return out


def greedy_accuracy(
    model_dir: str | Path, records: Sequence[Mapping[str, Any]], max_new_tokens: int = 48
) -> float:
    """Held-out exact-match accuracy of a saved model under greedy decoding."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    return task.accuracy(records, generate_responses(model, tokenizer, records, max_new_tokens))


def _build(
    out_dir: Path,
    role: str,
    tok_recipe: TokenizerRecipe,
    model_recipe: ModelRecipe,
    train_steps: int | None,
    seed: int,
    eval_records: int,
) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    began = time.perf_counter()
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(tok_recipe)
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
    # A short build needs fewer problems; make_records(n) is a prefix of make_records(m > n).
    records = task.make_records(min(_POOL, model_recipe.batch * max(1, steps)), "train", seed=seed)
    tensors = _training_tensors(tokenizer, tok_recipe, records)
    final_loss = _supervise(model, tensors, model_recipe, steps, seed, f"demo {role}")
    heldout = task.make_records(eval_records, "heldout", seed=seed)
    acc = task.accuracy(heldout, generate_responses(model, tokenizer, heldout))
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    info = {
        "role": role,
        "train_steps": steps,
        "final_train_loss": round(final_loss, 4),
        "heldout_accuracy": acc,
        "heldout_problems": eval_records,
        "build_seconds": round(time.perf_counter() - began, 1),
        "torch_threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return out_dir


def build_demo_teacher(
    out_dir: Path, train_steps: int | None = None, seed: int = 0, eval_records: int = _EVAL
) -> Path:
    """Train and save the teacher into `out_dir` (`train_steps` None: the recipe's)."""
    return _build(
        out_dir, "teacher", TEACHER_TOKENIZER, TEACHER_MODEL, train_steps, seed, eval_records
    )


def build_demo_student(
    out_dir: Path,
    kind: StudentKind = "cross",
    train_steps: int | None = None,
    seed: int = 0,
    eval_records: int = _EVAL,
) -> Path:
    """Train and save a student: "cross" has its own tokenizer, "same" the teacher's."""
    if kind not in ("cross", "same"):
        raise ValueError(f"kind must be 'cross' or 'same', got {kind!r}")
    recipe = STUDENT_TOKENIZER if kind == "cross" else TEACHER_TOKENIZER
    return _build(
        out_dir, f"student-{kind}", recipe, STUDENT_MODEL, train_steps, seed + 1, eval_records
    )


def source_key() -> str:
    """Hash of the code that decides the models: this file and the task."""
    digest = hashlib.sha256()
    for module_file in (__file__, task.__file__):
        digest.update(Path(module_file).read_bytes())
    return digest.hexdigest()[:12]


def _ensure(name: str, build: Any, root: Path | None) -> Path:
    return build_once((root or cache_dir()) / f"{name}-{source_key()}", build, INFO_FILE)


def ensure_demo_teacher(root: Path | None = None) -> Path:
    """The cached demo teacher directory, built first if this code has not built it yet."""
    return _ensure("demo-teacher", build_demo_teacher, root)


def ensure_demo_student(kind: StudentKind = "cross", root: Path | None = None) -> Path:
    """The cached demo student directory ("cross" or "same" tokenizer), built if needed."""
    if kind not in ("cross", "same"):
        raise ValueError(f"kind must be 'cross' or 'same', got {kind!r}")
    return _ensure(f"demo-student-{kind}", lambda d: build_demo_student(d, kind), root)


def read_info(model_dir: str | Path) -> dict[str, Any]:
    """What the build recorded: role, steps, held-out accuracy, build time."""
    return dict(json.loads((Path(model_dir) / INFO_FILE).read_text()))


def main() -> int:
    for name, ensure in (
        ("teacher", ensure_demo_teacher),
        ("student-cross", lambda: ensure_demo_student("cross")),
        ("student-same", lambda: ensure_demo_student("same")),
    ):
        path = ensure()
        info = read_info(path)
        print(
            f"{name:14s} {path}  heldout_accuracy={info['heldout_accuracy']:.3f} "
            f"(n={info['heldout_problems']})  build_seconds={info['build_seconds']}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
