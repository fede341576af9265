"""Checkpoints are atomic (issue #11, promise 19): a process saving 50 checkpoints is
SIGKILLed at random moments (8 times, then left to finish); after every kill `latest`
points at a checkpoint whose manifest verifies, and resume finds one. A checkpoint whose
files no longer match its manifest is passed over for the one before it."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opd_client.train.checkpoint import LATEST, SAVE_SLEEP_ENV, find_latest, verify_manifest

pytestmark = pytest.mark.slow
KILLS = 8

SAVER = """
import sys
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from opd_client.train import checkpoint as ckpt

student, ckpt_dir, total = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
model = AutoModelForCausalLM.from_pretrained(student)
tokenizer = AutoTokenizer.from_pretrained(student)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
ckpt.remove_partial(ckpt_dir)
latest = ckpt.find_latest(ckpt_dir)
for step in range((latest.step if latest else 0) + 1, total + 1):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    ckpt.save_checkpoint(ckpt_dir, step=step, model=model, tokenizer=tokenizer,
                         optimizer=optimizer, rng=ckpt.capture_rng(),
                         state={"data_position": step}, keep_last=3)
    print(step, flush=True)
"""


def _latest_verifies(ckpt_dir: Path) -> int:
    pointer = ckpt_dir / LATEST
    if not pointer.exists():
        return 0
    target = ckpt_dir / pointer.read_text().strip()
    assert verify_manifest(target), f"latest -> {target.name} does not verify"
    found = find_latest(ckpt_dir)
    assert found is not None and found.step >= int(target.name.split("-")[1])
    return found.step


def test_sigkill_during_50_saves_never_leaves_a_bad_latest(
    same_tok_student: Path, tmp_path: Path
) -> None:
    ckpt_dir = tmp_path / "checkpoints"
    env = {**os.environ, "OMP_NUM_THREADS": "1", SAVE_SLEEP_ENV: "0.01"}
    command = [sys.executable, "-c", SAVER, str(same_tok_student), str(ckpt_dir), "50"]
    rng = random.Random(7)
    for _ in range(KILLS):
        saver = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
        assert saver.stdout is not None
        for _ in range(rng.randint(1, 3)):  # a few saves in, so imports are behind it
            assert saver.stdout.readline(), "the saver stopped early"
        time.sleep(rng.uniform(0.0, 0.08))  # somewhere inside the next save
        saver.send_signal(signal.SIGKILL)
        saver.wait()
        _latest_verifies(ckpt_dir)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _latest_verifies(ckpt_dir) == 50

    # A flipped byte in the newest checkpoint: resume falls back to the one before.
    newest = ckpt_dir / "step-00000050" / "model" / "model.safetensors"
    data = bytearray(newest.read_bytes())
    data[-1] ^= 0xFF
    newest.write_bytes(bytes(data))
    assert not verify_manifest(newest.parent.parent)
    found = find_latest(ckpt_dir)
    assert found is not None and found.step == 49
