"""Tiny students and a prompts file for every test that runs the trainer.

The trainer tests (tests/train/conftest.py wraps these in session fixtures) and the
end-to-end topology test (tests/e2e/test_topology.py) need the same two kinds of
student: one that shares the tiny teacher's tokenizer (the identity bridge) and one with
its own byte-level BPE and chat template (the cross-tokenizer bridge). They are plain
functions so that any folder can build them into its own temporary directory; each
build is deterministic in its seed and takes well under a second.

What it does not know: the teacher service or the trainer's config; it only writes
`save_pretrained` directories and a JSON-lines file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from opd_teacher.tiny import CHAT_TEMPLATE, synthetic_corpus

# The cross-tokenizer student's chat template: different from the teacher's on purpose.
CROSS_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def save_llama(path: Path, tokenizer: Any, hidden: int, layers: int, seed: int) -> Path:
    """A freshly initialised Llama of `hidden` width and `layers` layers, with
    `tokenizer`, saved into `path` (returned)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_same_tok_student(teacher_dir: Path, path: Path, seed: int = 1) -> Path:
    """A fresh 1-layer student that shares the teacher's tokenizer (identity bridge)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(teacher_dir)
    return save_llama(path, tok, 32, 1, seed=seed)


def build_cross_tok_student(path: Path, seed: int = 2) -> Path:
    """A 1-layer student with its own byte-level BPE (vocab 300) and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(synthetic_corpus(500, seed=7), trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        chat_template=CROSS_CHAT_TEMPLATE,
    )
    assert CROSS_CHAT_TEMPLATE != CHAT_TEMPLATE
    return save_llama(path, hf, 32, 1, seed=seed)


def write_prompts(path: Path) -> Path:
    """Four prompts (plain and chat, with and without answers) as JSON lines at `path`."""
    lines = [
        {"prompt": "the teacher adds", "task": "words"},
        {"messages": [{"role": "user", "content": "3+4"}], "answer": "7"},
        {"prompt": "1 2 3"},
        {"messages": [{"role": "user", "content": "count to 5"}]},
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path
