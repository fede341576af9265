"""Held-out evaluation in the loop and `opd-train eval` / `opd-train plot`: evals run before
step 0, every interval and at the end; they never move the training run's random stream;
a resumed run keeps one eval per step; the CLI agrees with the loop; bad input exits 2."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from opd_client.train.cli import main
from opd_client.train.config_load import load_config
from opd_client.train.evaluate import EVAL_FILE
from opd_client.train.loop import train
from opd_client.train.metrics import TENSORBOARD_DIR, read_metrics

MakeConfig = Callable[..., Path]  # the `make_config` fixture of tests/train/conftest.py


@pytest.fixture
def eval_prompts(tmp_path: Path) -> Path:
    path = tmp_path / "heldout.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "3+4"}], "answer": "7"},
        {"prompt": "1 2 3", "answer": "4"},
        {"prompt": "count to 2", "answer": "1 2"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_before_every_interval_and_at_end_without_moving_training(
    make_config: MakeConfig, eval_prompts: Path, tmp_path: Path
) -> None:
    with_eval = load_config(
        make_config(
            run_dir=tmp_path / "with",
            max_steps=3,
            eval__prompts=str(eval_prompts),
            eval__interval=2,
            eval__max_new_tokens=6,
            eval__decoding="top_p",
            eval__verifier="train_verifiers:accept_all",
        )
    )
    plain = load_config(make_config(run_dir=tmp_path / "plain", max_steps=3))
    result = train(with_eval)
    rows = read_metrics(Path(with_eval.run_dir), EVAL_FILE)
    assert [r["step"] for r in rows] == [0, 2, 3]
    assert all(r["eval_accuracy"] == 1.0 and r["eval_n"] == 3 for r in rows)
    assert result.evals == rows
    # Sampled evals fork the RNG, so training sees the same random stream as a run without.
    assert train(plain).losses == result.losses


def test_resume_keeps_one_eval_per_step(
    make_config: MakeConfig, eval_prompts: Path, tmp_path: Path
) -> None:
    common = dict(
        run_dir=tmp_path / "run",
        eval__prompts=str(eval_prompts),
        eval__interval=1,
        eval__max_new_tokens=4,
        eval__verifier="train_verifiers:reject_all",
    )
    train(load_config(make_config(max_steps=2, checkpoint__interval=1, **common)))
    rows_before = read_metrics(tmp_path / "run", EVAL_FILE)
    # As if killed before step 2's checkpoint: the rerun redoes step 1 from checkpoint 1.
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-00000002")
    train(load_config(make_config(max_steps=4, checkpoint__interval=1, **common)))
    rows = read_metrics(tmp_path / "run", EVAL_FILE)
    assert rows[:2] == rows_before[:2]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    assert all(r["eval_accuracy"] == 0.0 and r["eval_correct"] == 0 for r in rows)

    # TensorBoard reads as one run too: each step once, the same values as the JSONL files.
    board = EventAccumulator(str(tmp_path / "run" / TENSORBOARD_DIR))
    board.Reload()
    losses = [(e.step, e.value) for e in board.Scalars("train/loss")]
    steps = read_metrics(tmp_path / "run")
    assert [s for s, _ in losses] == [r["step"] for r in steps] == [0, 1, 2, 3]
    for (_, logged), record in zip(losses, steps, strict=True):
        assert logged == pytest.approx(record["loss"], rel=1e-6)
    accuracy = board.Scalars("eval/eval_accuracy")
    assert [(e.step, e.value) for e in accuracy] == [(s, 0.0) for s in range(5)]
    assert {"train/grad_norm", "train/student_mass", "train/overlap_ratio"} <= set(
        board.Tags()["scalars"]
    )


def test_eval_cli_matches_the_loop_and_plot_draws_runs(
    make_config: MakeConfig,
    eval_prompts: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config_path = make_config(
        run_dir=tmp_path / "a",
        max_steps=2,
        eval__prompts=str(eval_prompts),
        eval__max_new_tokens=6,
        # A verifier that reads the response: the greedy responses of both sides must agree.
        eval__verifier="opd_client.train.task:exact_match",
    )
    config = load_config(config_path)
    last = train(config).evals[-1]
    capsys.readouterr()
    assert main(["eval", str(config_path), "--checkpoint", str(config.run_dir)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("eval_accuracy", "eval_correct", "eval_response_len_mean"):
        assert printed[key] == last[key], key

    train(load_config(make_config(run_dir=tmp_path / "b", max_steps=2)))
    out = tmp_path / "plots" / "curves.png"
    assert main(["plot", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_bad_eval_input_exits_2_naming_the_problem(
    make_config: MakeConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    no_answer = tmp_path / "no-answer.jsonl"
    no_answer.write_text('{"prompt": "a", "answer": "b"}\n{"prompt": "c"}\n')
    config = make_config(run_dir=tmp_path / "r1", eval__prompts=str(no_answer))
    assert main(["run", str(config)]) == 2
    assert "eval.prompts: line 2: needs an 'answer'" in capsys.readouterr().err
    assert not (tmp_path / "r1").exists()

    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "a", "answer": "b"}\n')
    config = make_config(eval__verifier="no_such_module:f", eval__prompts=str(good))
    assert main(["eval", str(config)]) == 2
    assert "eval.verifier: cannot load 'no_such_module:f'" in capsys.readouterr().err

    config = make_config(eval__verifier="nocolon")
    assert main(["config", str(config)]) == 2
    assert "eval.verifier: must be module:function" in capsys.readouterr().err

    empty = tmp_path / "empty-run"
    empty.mkdir()
    assert main(["plot", str(empty), "--out", str(tmp_path / "x.png")]) == 2
    assert "no metrics.jsonl or eval.jsonl" in capsys.readouterr().err
