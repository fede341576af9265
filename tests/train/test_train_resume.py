"""`opd-train run` as a user runs it: SIGKILLed mid-save and at a random moment, then
rerun with the same command, it gives the uninterrupted run's losses and parameters."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from opd_client.train.checkpoint import SAVE_SLEEP_ENV
from opd_client.train.metrics import read_metrics

MakeConfig = Callable[..., Path]  # the `make_config` fixture of tests/train/conftest.py

pytestmark = pytest.mark.slow


def _command(config: Path) -> list[str]:
    return [sys.executable, "-m", "opd_client.train.cli", "run", str(config)]


def _env(save_sleep: float = 0.0) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", SAVE_SLEEP_ENV: str(save_sleep)}


def _run_to_end(config: Path) -> None:
    done = subprocess.run(_command(config), env=_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr


def _kill_when(config: Path, ready, timeout_s: float = 120) -> None:  # type: ignore[no-untyped-def]
    process = subprocess.Popen(
        _command(config), env=_env(0.4), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + timeout_s
    try:
        while not ready() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert process.poll() is None, "finished before the kill"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


def test_sigkill_mid_save_and_at_random_then_resume_is_exact(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    steps = dict(max_steps=6, checkpoint__interval=2, checkpoint__keep_last=2)
    reference = make_config(run_dir=tmp_path / "ref", **steps)
    _run_to_end(reference)

    config = make_config(run_dir=tmp_path / "killed", **steps)
    ckpts = tmp_path / "killed" / "checkpoints"
    # 1. Kill inside the save of step 4: its temp dir exists, step 2 is complete.
    _kill_when(config, lambda: any(ckpts.glob(".tmp-step-00000004*")))
    assert (ckpts / "step-00000002" / "state.json").is_file()
    assert not (ckpts / "step-00000004").exists()
    # 2. Kill at a random moment of the resumed run (printed to reproduce a failure).
    delay = random.uniform(0.3, 3.5)
    print(f"second SIGKILL after {delay:.2f} s")
    start = time.monotonic()
    _kill_when(config, lambda: time.monotonic() - start > delay)
    # 3. The same command again, to the end.
    _run_to_end(config)

    expected = [r["loss"] for r in read_metrics(tmp_path / "ref")]
    got = [r["loss"] for r in read_metrics(tmp_path / "killed")]
    assert [r["step"] for r in read_metrics(tmp_path / "killed")] == list(range(6))
    assert got == pytest.approx(expected, abs=1e-6)
    a = load_file(str(tmp_path / "ref/checkpoints/step-00000006/model/model.safetensors"))
    b = load_file(str(ckpts / "step-00000006/model/model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step-00000004", "step-00000006"]
    assert (ckpts / "latest").read_text().strip() == "step-00000006"
