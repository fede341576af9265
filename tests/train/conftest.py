"""Fixtures for the trainer tests: a real teacher service on the tiny model, two tiny
students (one with the teacher's tokenizer, one with a different byte-level BPE
tokenizer and chat template), a prompts file and a config factory.

The teacher runs as `opd-teacher serve --max-batch-sequences 1` in a subprocess for the
whole session, so its answers never depend on batch composition and the trainer's
subprocess runs and in-process runs see the same teacher.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from processes import free_port, start_teacher, stop

from opd_teacher.tiny import CHAT_TEMPLATE, synthetic_corpus


@pytest.fixture(scope="session")
def teacher_address(tiny_teacher_dir: Path) -> Iterator[str]:
    port = free_port()
    process = start_teacher(
        tiny_teacher_dir,
        port,
        "--max-batch-sequences",
        "1",
        timeout_s=180,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop(process)


def _save_llama(path: Path, tokenizer: Any, hidden: int, layers: int, seed: int) -> Path:
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


@pytest.fixture(scope="session")
def same_tok_student(tiny_teacher_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh 1-layer student that shares the teacher's tokenizer (identity bridge)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    return _save_llama(tmp_path_factory.mktemp("student-same"), tok, 32, 1, seed=1)


@pytest.fixture(scope="session")
def cross_tok_student(tmp_path_factory: pytest.TempPathFactory) -> Path:
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
    template = (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        chat_template=template,
    )
    assert template != CHAT_TEMPLATE
    return _save_llama(tmp_path_factory.mktemp("student-cross"), hf, 32, 1, seed=2)


@pytest.fixture(scope="session")
def prompts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    lines = [
        {"prompt": "the teacher adds", "task": "words"},
        {"messages": [{"role": "user", "content": "3+4"}], "answer": "7"},
        {"prompt": "1 2 3"},
        {"messages": [{"role": "user", "content": "count to 5"}]},
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


MakeConfig = Callable[..., Path]


@pytest.fixture
def make_config(
    teacher_address: str, same_tok_student: Path, prompts_file: Path, tmp_path: Path
) -> MakeConfig:
    """make_config(run_dir=None, **dotted overrides) -> path of a YAML config file."""

    def make(run_dir: Path | None = None, **overrides: Any) -> Path:
        raw: dict[str, Any] = {
            "student": str(same_tok_student),
            "teachers": [{"address": teacher_address, "top_k": 8, "timeout_s": 20}],
            "prompts": str(prompts_file),
            "run_dir": str(run_dir or tmp_path / "run"),
            "rollout": {"max_new_tokens": 10, "samples_per_prompt": 1, "batch_size": 4},
            "optim": {"lr": 3e-3},
            "prompts_per_step": 4,
            "max_steps": 4,
            "seed": 3,
            "torch_threads": 1,
            "progress": False,
            "checkpoint": {"interval": 2, "keep_last": 2},
        }
        for key, value in overrides.items():
            node = raw
            *parents, leaf = key.split("__")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        path = tmp_path / f"config-{len(list(tmp_path.glob('config-*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    return make
