"""Tiny teacher models built locally, so tests and the demo never touch a model hub.

A byte-level BPE tokenizer (vocab 512) is trained with `tokenizers` on generated text,
saved as a fast tokenizer with a chat template and the special tokens of DESIGN.md §2's
roles; a 2-layer Llama (hidden 128, 4 heads: head_dim 32, which vLLM's CPU attention
needs) is trained for a few hundred steps on the same text so its distributions are
peaked, not near-uniform. The result is cached under `OPD_CACHE_DIR` (default
`.cache/opd` in the working directory) keyed by a hash of this file, so it is built once.

    python -m opd_teacher.tiny            # prints the model directory
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from opd_client.cache import build_once, cache_dir

SPECIAL_TOKENS = (
    "<|pad|>",
    "<|bos|>",
    "<|eos|>",
    "<|im_start|>",
    "<|im_end|>",
    "<think>",
    "</think>",
)
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_WORDS = [
    "the",
    "a",
    "teacher",
    "student",
    "model",
    "token",
    "learns",
    "counts",
    "adds",
    "numbers",
    "and",
    "of",
    "to",
    "is",
]


def synthetic_corpus(num_lines: int, seed: int = 0) -> list[str]:
    """Deterministic lines of arithmetic, counting and word salad with a reasoning marker."""
    rng = random.Random(seed)
    lines = []
    for i in range(num_lines):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        kind = i % 3
        if kind == 0:
            lines.append(f"<think>{a}+{b}</think> {a}+{b}={a + b}.")
        elif kind == 1:
            start = rng.randint(0, 20)
            lines.append(" ".join(str(start + j) for j in range(rng.randint(3, 8))))
        else:
            lines.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 12))) + ".")
    return lines


def build_tokenizer(corpus: list[str], vocab_size: int = 512):  # type: ignore[no-untyped-def]
    """A byte-level BPE fast tokenizer with opd's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<|pad|>",
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_teacher(out_dir: Path, train_steps: int = 300, seed: int = 0) -> Path:
    """Trains and saves the tiny tokenizer and model into `out_dir`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    corpus = synthetic_corpus(4000, seed)
    tokenizer = build_tokenizer(corpus)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    ids = [tokenizer.bos_token_id]
    for line in corpus:
        ids += [*tokenizer.encode(line, add_special_tokens=False), tokenizer.eos_token_id]
    data = torch.tensor(ids)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = torch.Generator().manual_seed(seed)
    seq_len, batch = 64, 16
    model.train()
    for _ in range(train_steps):
        starts = torch.randint(0, data.numel() - seq_len - 1, (batch,), generator=rng)
        window = torch.stack([data[s : s + seq_len] for s in starts.tolist()])
        loss = model(input_ids=window, labels=window).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _source_key() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]


def ensure_tiny_teacher(root: Path | None = None) -> Path:
    """The cached tiny teacher directory, built first if this code has not built it yet."""
    target = (root or cache_dir()) / f"tiny-teacher-{_source_key()}"
    return build_once(target, build_tiny_teacher, "config.json")


if __name__ == "__main__":
    print(ensure_tiny_teacher())
