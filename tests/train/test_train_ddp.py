"""`torchrun --nproc-per-node 2 opd-train run CONFIG` on CPU (gloo): each rank samples
and scores its own half of every step's prompts against the shared teacher, DDP averages
the gradients, and the job ends where one process with the whole batch ends.

The session's teacher answers with batches of one, so its answers do not depend on
which rank's stream a sequence came on. A rank's half of the step (2 prompts) is one
rollout batch, so its sampling seeds are the single process's (rollout.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from opd_client.train.config import ConfigError
from opd_client.train.config_load import load_config
from opd_client.train.loop import train
from opd_client.train.metrics import read_metrics

MakeConfig = Callable[..., Path]  # the `make_config` fixture of tests/train/conftest.py

pytestmark = pytest.mark.slow

SETTINGS = dict(
    prompts_per_step=4,
    max_steps=3,
    rollout__batch_size=2,
    checkpoint__interval=3,
    teacher_unavailable_timeout_s=60,
)


def _run(command: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / "step-00000003" / "model" / "model.safetensors")


def test_torchrun_two_ranks_equal_one_process_with_the_whole_batch(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    single = make_config(run_dir=tmp_path / "single", **SETTINGS)
    ranks = make_config(run_dir=tmp_path / "ranks", **SETTINGS)
    _run([sys.executable, "-m", "opd_client.train.cli", "run", str(single)])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    _run([*torchrun, "--nproc-per-node", "2", "-m", "opd_client.train.cli", "run", str(ranks)])

    report = json.loads((tmp_path / "ranks" / "ranks.json").read_text())
    assert report["world_size"] == 2
    digests = report["param_sha256_by_rank"]
    assert len(digests) == 2 and digests[0] == digests[1]  # bit-identical ranks

    one, two = read_metrics(tmp_path / "single"), read_metrics(tmp_path / "ranks")
    assert [r["step"] for r in two] == [0, 1, 2]
    for a, b in zip(one, two, strict=True):
        assert a["loss_tokens"] == b["loss_tokens"]  # the same rollouts, the whole world's count
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    first, second = _final_weights(tmp_path / "single"), _final_weights(tmp_path / "ranks")
    assert first.keys() == second.keys()
    for name, weight in first.items():
        torch.testing.assert_close(second[name], weight, rtol=1e-4, atol=1e-5, msg=name)
    start = load_file(Path(load_config(single).student) / "model.safetensors")
    moved = max(float((first[n] - start[n]).abs().max()) for n in start)
    assert moved > 1e-3  # the steps changed the student, so equality says something


def test_prompts_per_step_must_split_over_the_ranks(
    make_config: MakeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    config = load_config(make_config(run_dir=tmp_path / "bad", **SETTINGS))
    with pytest.raises(ConfigError, match="prompts_per_step: 4 does not split over 3"):
        train(config)
    assert not (tmp_path / "bad").exists()
