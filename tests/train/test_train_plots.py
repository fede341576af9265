"""`opd-train plot` on runs with several tasks and teachers: per-task accuracy and
per-teacher loss and student-mass panels, from fake run directories (no model)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from opd_client.train.plots import grouped_series, plot_runs


def _write(path: Path, records: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _fake_run(
    run_dir: Path, teachers: tuple[str, ...], tasks: tuple[str, ...], gain: float
) -> Path:
    run_dir.mkdir(parents=True)
    metrics = []
    for step in range(6):
        record: dict[str, object] = {"step": step, "loss": 1.0 / (step + 1), "student_mass": 0.5}
        record["teachers"] = {
            name: {"loss": (i + 1.0) / (step + 1), "student_mass": 0.4 + 0.05 * step + 0.1 * i}
            for i, name in enumerate(teachers)
        }
        if len(teachers) > 1 and step == 2:  # a step where one teacher had no responses
            record["teachers"][teachers[1]] = {"loss": None, "responses": 0}  # type: ignore[index]
        metrics.append(record)
    _write(run_dir / "metrics.jsonl", metrics)
    evals = []
    for step in (0, 3, 6):
        by_task = {t: 0.2 + gain * step * (i + 1) for i, t in enumerate(tasks)}
        record = {"step": step, "eval_accuracy": sum(by_task.values()) / max(len(by_task), 1)}
        if tasks:
            record["eval_accuracy_by_task"] = by_task
        evals.append(record)
    _write(run_dir / "eval.jsonl", evals)
    return run_dir


def _png_height(path: Path) -> int:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int(struct.unpack(">I", data[20:24])[0])


def test_per_task_and_per_teacher_panels(tmp_path: Path) -> None:
    runs = [
        _fake_run(tmp_path / "routed", ("math", "sorter"), ("addition", "sorting"), 0.05),
        _fake_run(tmp_path / "single", ("math",), ("addition", "sorting"), 0.02),
    ]
    from opd_client.train.metrics import read_metrics

    evals = read_metrics(runs[0], "eval.jsonl")
    by_task = grouped_series(evals, "eval_accuracy_by_task")
    assert set(by_task) == {"addition", "sorting"}
    assert by_task["sorting"][0] == [0, 3, 6]
    assert by_task["sorting"][1] == pytest.approx([0.2, 0.5, 0.8])
    losses = grouped_series(read_metrics(runs[0]), "teachers", "loss")
    assert set(losses) == {"math", "sorter"}
    assert losses["sorter"][0] == [0, 1, 3, 4, 5]  # the step with loss None is left out
    assert set(grouped_series(read_metrics(runs[0]), "teachers", "student_mass")) == {
        "math",
        "sorter",
    }

    out = plot_runs(runs, tmp_path / "figs" / "multi.png", ["routed", "single"])
    assert out.is_file() and out.stat().st_size > 10_000
    plain = _fake_run(tmp_path / "plain", ("teacher",), (), 0.05)
    alone = plot_runs([plain], tmp_path / "plain.png")
    # Three more panels (accuracy by task, loss and student mass by teacher): two more rows.
    assert _png_height(out) > _png_height(alone)
    one = plot_runs([runs[0]], tmp_path / "one.png")  # one run: colour per task/teacher
    assert _png_height(one) == _png_height(out)
