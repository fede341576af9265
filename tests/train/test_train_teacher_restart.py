"""A teacher that dies and comes back: `opd-train run` waits for it with back-off, says
so, and carries on without losing or repeating a step (DESIGN.md §2: the trainer, not the
SDK, owns the long wait). The teacher is a real `opd-teacher serve` process, SIGKILLed
mid-run and restarted on the same port; its answers (batches of one) are the session
teacher's, so the run must end with the losses of a run that never lost its teacher."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from processes import free_port, start_teacher, start_trainer, stop, wait_until

from opd_client.train.metrics import read_metrics

MakeConfig = Callable[..., Path]  # the `make_config` fixture of tests/train/conftest.py

pytestmark = pytest.mark.slow

STEPS = dict(max_steps=8, checkpoint__interval=4, teacher_unavailable_timeout_s=120)
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def _teacher(model: Path, port: int) -> subprocess.Popen[str]:
    return start_teacher(model, port, "--max-batch-sequences", "1", env=ONE_THREAD)


def test_teacher_killed_and_restarted_mid_run_loses_no_step(
    make_config: MakeConfig, tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    reference = make_config(run_dir=tmp_path / "ref", **STEPS)
    done = subprocess.run(
        [sys.executable, "-m", "opd_client.train.cli", "run", str(reference)],
        env=ONE_THREAD,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    port = free_port()
    own = [{"address": f"127.0.0.1:{port}", "top_k": 8, "timeout_s": 5}]
    config = make_config(run_dir=tmp_path / "run", teachers=own, **STEPS)
    teacher = _teacher(tiny_teacher_dir, port)
    log = tmp_path / "trainer.log"
    trainer = start_trainer(config, log, env=ONE_THREAD)
    try:
        wait_until(lambda: len(read_metrics(tmp_path / "run")) >= 2, trainer, log)
        teacher.send_signal(signal.SIGKILL)
        teacher.wait()
        killed_after = len(read_metrics(tmp_path / "run"))
        time.sleep(4.0)  # long enough for the SDK's own retries to give up
        assert trainer.poll() is None, "the trainer must wait for its teacher, not exit"
        teacher = _teacher(tiny_teacher_dir, port)
        assert trainer.wait(timeout=180) == 0, log.read_text()[-3000:]
    finally:
        if trainer.poll() is None:
            trainer.kill()
        stop(teacher)

    assert killed_after < STEPS["max_steps"], "the teacher must die mid-run"
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == list(range(STEPS["max_steps"]))
    assert max(r["teacher_wait_s"] for r in records) >= 2.0  # it waited, and it says so
    assert "teacher unavailable" in (tmp_path / "trainer.log").read_text().lower()
    expected = [r["loss"] for r in read_metrics(tmp_path / "ref")]
    assert [r["loss"] for r in records] == pytest.approx(expected, abs=1e-6)
