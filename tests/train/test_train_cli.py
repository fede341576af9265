"""`opd-train` bad input: one line on stderr, exit code 2, no traceback, nothing in an
existing run directory changed; `opd-train config --show` documents every field."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from opd_client.train.cli import main

MakeConfig = Callable[..., Path]  # the `make_config` fixture of tests/train/conftest.py


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def finished_run(make_config: MakeConfig, tmp_path: Path) -> Path:
    run_dir = tmp_path / "done"
    assert main(["run", str(make_config(run_dir=run_dir, max_steps=2))]) == 0
    return run_dir


def test_bad_inputs_exit_2_with_one_line_and_touch_nothing(
    make_config: MakeConfig,
    finished_run: Path,
    tmp_path: Path,
    free_port: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    not_lm = tmp_path / "not-lm"
    not_lm.mkdir()
    (not_lm / "config.json").write_text(json.dumps({"model_type": "no-such-model"}))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "ok"}\n{"prompt": \n')
    no_field = tmp_path / "no-field.jsonl"
    no_field.write_text('{"prompt": "ok"}\n{"answer": "7"}\n')
    cases = {
        "student: required": dict(student=""),
        "loss.gamma: must be in [0, 1]": dict(loss__gamma=2.0),
        "loss.variant: must be one of": dict(loss__variant="kl"),
        "unknown field": dict(loss__varient="lsm"),
        "student: ": dict(student=str(not_lm)),
        "unreachable": dict(teachers=[{"address": f"127.0.0.1:{free_port}", "timeout_s": 1}]),
        "max_position_embeddings 256": dict(rollout__max_new_tokens=255),
        "holds no prompts": dict(prompts=str(empty)),
        "broken.jsonl line 2: not JSON": dict(prompts=str(broken)),
        "no-field.jsonl line 2: needs exactly one": dict(prompts=str(no_field)),
        "config: differs": dict(loss__variant="stopgrad"),
    }
    before = _snapshot(finished_run)
    for expected, overrides in cases.items():
        capsys.readouterr()
        code = main(["run", str(make_config(run_dir=finished_run, **overrides))])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, (expected, err)
        assert len(lines) == 1 and expected in lines[0], (expected, err)
        assert "Traceback" not in err
    assert _snapshot(finished_run) == before


def test_cli_process_bad_set_is_one_line(make_config: MakeConfig) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "opd_client.train.cli",
            "run",
            str(make_config()),
            "--set",
            "seed=-1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "opd-train: error: seed: must be >= 0, got -1"


def test_config_show_documents_every_field(
    make_config: MakeConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", str(make_config()), "--show", "--set", "optim.lr=0.5"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.5" in out and "# peak learning rate, > 0" in out
    fields = [
        line for line in out.splitlines() if line.strip() and not line.strip().startswith("#")
    ]
    comments = [line for line in out.splitlines() if line.strip().startswith("#")]
    assert len(comments) == len(fields)
    assert main(["config", "--show"]) == 0
    assert "teacher_unavailable_timeout_s: 1800.0" in capsys.readouterr().out
    assert main(["config", "--set", "nope=1"]) == 2
