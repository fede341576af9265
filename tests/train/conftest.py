"""Fixtures for the trainer tests: a real teacher service on the tiny model, two tiny
students (one with the teacher's tokenizer, one with a different byte-level BPE
tokenizer and chat template), a prompts file and a config factory.

The teacher runs as `opd-teacher serve --max-batch-sequences 1` in a subprocess for the
whole session, so its answers never depend on batch composition and the trainer's
subprocess runs and in-process runs see the same teacher.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from processes import free_port, start_teacher, stop
from students import build_cross_tok_student, build_same_tok_student, write_prompts


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


@pytest.fixture(scope="session")
def same_tok_student(tiny_teacher_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh 1-layer student that shares the teacher's tokenizer (identity bridge)."""
    return build_same_tok_student(tiny_teacher_dir, tmp_path_factory.mktemp("student-same"))


@pytest.fixture(scope="session")
def cross_tok_student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer student with its own byte-level BPE (vocab 300) and chat template."""
    return build_cross_tok_student(tmp_path_factory.mktemp("student-cross"))


@pytest.fixture(scope="session")
def prompts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_prompts(tmp_path_factory.mktemp("prompts") / "prompts.jsonl")


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
