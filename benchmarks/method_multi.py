"""`python benchmarks/method.py --multi`: routing to expert teachers vs one teacher for all.

    python benchmarks/method.py --multi --quick     # 3 arms x 3 seeds, 150 steps (≈ 11 min)
    python benchmarks/method.py --multi             # 3 arms x 3 seeds, 300 steps (≈ 20 min)
    python benchmarks/method.py --multi --quick --variants routed --seeds 1

Why this script exists: the several-teachers feature claims that one student learns two
tasks at once when each prompt goes to the teacher expert in its task. This checks it on
the toy: the two-task student (`multitask_models.py`: partly competent at 2–3-digit
addition and at sorting 3–6 digits) trains on an even mix of both tasks with the demo's
recipe (`demo_config` via `demo_multi.multi_config`) in three arms that differ only in
the `teachers:` list —

- routed: addition prompts to the addition teacher, sorting prompts to the sorting one;
- adder_only / sorter_only: one teacher (addition's or sorting's) scores both tasks.

Each arm runs for several seeds against two teacher services started once. It prints
each teacher's own held-out accuracy per task (what it can teach), a table of held-out
accuracy per task before and after (mean ± std over seeds), and JSON, and draws the
per-task accuracy curves of every arm (seed 0).

Report honestly where routing does not help: the single-teacher arms keep the task their
teacher knows, and a teacher that cannot do a task may still carry signal for it.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml
from common import print_json, print_table

from opd_client.train import demo_models, multitask_models
from opd_client.train.config_load import load_config
from opd_client.train.demo import teacher_service
from opd_client.train.demo_multi import ROUTED, multi_config, teacher_dirs, write_multi_data
from opd_client.train.evaluate import EVAL_FILE
from opd_client.train.loop import train
from opd_client.train.metrics import read_metrics
from opd_client.train.plots import plot_runs

TASK_NAMES = tuple(t.name for t in multitask_models.TASKS)
# arm -> {teacher name: the tasks it scores}
MULTI_ARMS: dict[str, dict[str, tuple[str, ...]]] = {
    "routed": dict(ROUTED),
    "adder_only": {"adder": TASK_NAMES},
    "sorter_only": {"sorter": TASK_NAMES},
}


def teacher_accuracy(teachers: dict[str, Path], heldout: int) -> dict[str, dict[str, float]]:
    """Each teacher's own greedy held-out accuracy on each task (what it can teach)."""
    out = {}
    for name, path in teachers.items():
        out[name] = {
            spec.name: demo_models.greedy_accuracy(path, spec.make_records(heldout, "heldout", 0))
            for spec in multitask_models.TASKS
        }
    return out


def run_multi_arm(
    arm: str,
    seed: int,
    addresses: dict[str, str],
    student: Path,
    data: tuple[Path, Path],
    out: Path,
    args: Any,
) -> dict[str, Any]:
    run_dir = out / f"{arm}-seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a run left from another --steps would resume
    routes = {name: (addresses[name], tasks) for name, tasks in MULTI_ARMS[arm].items()}
    raw = multi_config(student, routes, data[0], data[1], run_dir, args.steps)
    raw["seed"] = seed
    raw["progress"] = False
    raw["tensorboard"] = False
    raw["eval"]["interval"] = max(1, args.steps // 4)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "arm.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    began = time.perf_counter()
    result = train(load_config(run_dir / "arm.yaml"))
    evals = read_metrics(run_dir, EVAL_FILE)
    rows = read_metrics(run_dir)
    before, after = evals[0]["eval_accuracy_by_task"], evals[-1]["eval_accuracy_by_task"]
    aligned = {
        t: statistics.fmean(r["tasks"][t]["aligned_fraction"] for r in rows if t in r["tasks"])
        for t in TASK_NAMES
    }
    return {
        "arm": arm,
        "seed": seed,
        "steps": result.steps_done,
        "seconds": round(time.perf_counter() - began, 1),
        "accuracy_before": before,
        "accuracy_after": after,
        "mean_after": statistics.fmean(after.values()),
        "aligned_fraction": aligned,
        "run_dir": str(run_dir),
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def summarise(arms: list[str], results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per arm: mean ± std over seeds of each task's final accuracy and of their mean."""
    summary = []
    for arm in arms:
        rs = [r for r in results if r["arm"] == arm]
        row: dict[str, Any] = {"arm": arm, "seeds": len(rs), "steps": rs[0]["steps"]}
        for t in TASK_NAMES:
            row[f"{t}_before"] = rs[0]["accuracy_before"][t]
            row[f"{t}_mean"], row[f"{t}_std"] = _mean_std([r["accuracy_after"][t] for r in rs])
        row["both_mean"], row["both_std"] = _mean_std([r["mean_after"] for r in rs])
        summary.append(row)
    return summary


def run(args: Any) -> int:
    """The --multi study; `args` are method.py's parsed arguments."""
    began = time.perf_counter()
    args.steps = args.steps or (150 if args.quick else 300)
    heldout = args.heldout or (100 if args.quick else 200)  # per task
    arms = [a.strip() for a in (args.variants or ",".join(MULTI_ARMS)).split(",") if a.strip()]
    unknown = [a for a in arms if a not in MULTI_ARMS]
    if unknown:
        raise SystemExit(f"unknown --multi arms {unknown} (choose from {', '.join(MULTI_ARMS)})")
    out = Path(args.out).resolve()
    data = write_multi_data(out / "data", heldout)
    teachers = teacher_dirs()
    student = multitask_models.ensure_multi_student()
    competence = teacher_accuracy(teachers, heldout)
    for name, accs in competence.items():
        line = ", ".join(f"{t} {a:.1%}" for t, a in accs.items())
        print(f"teacher {name} ({teachers[name].name}): {line} (n={heldout} per task)", flush=True)
    results = []
    with ExitStack() as stack:
        # Two services and the trainer share the cores: one torch thread per service.
        addresses = {
            name: stack.enter_context(teacher_service(path, threads=1))
            for name, path in teachers.items()
        }
        for arm in arms:
            for seed in range(args.seeds):
                r = run_multi_arm(arm, seed, addresses, student, data, out, args)
                print(json.dumps(r), file=sys.stderr, flush=True)
                results.append(r)
    summary = summarise(arms, results)
    headers = ["arm", "seeds", "steps/run"]
    for t in TASK_NAMES:
        headers += [f"{t} before", f"{t} after"]
    headers.append("mean of tasks after")
    table = []
    for row in summary:
        cells = [row["arm"], row["seeds"], row["steps"]]
        for t in TASK_NAMES:
            cells += [
                f"{row[f'{t}_before']:.3f}",
                f"{row[f'{t}_mean']:.3f} ± {row[f'{t}_std']:.3f}",
            ]
        cells.append(f"{row['both_mean']:.3f} ± {row['both_std']:.3f}")
        table.append(cells)
    print_table(headers, table)
    curves = plot_runs(
        [Path(r["run_dir"]) for r in results if r["seed"] == 0],
        out / "curves-multi.png",
        [r["arm"] for r in results if r["seed"] == 0],
    )
    report = {
        "benchmark": "method-multi",
        "steps": args.steps,
        "heldout_per_task": heldout,
        "teacher_accuracy": competence,
        "arms": summary,
        "runs": results,
        "curves": str(curves),
        "seconds": round(time.perf_counter() - began, 1),
        "cpu_count": os.cpu_count(),
    }
    print_json(report)
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    return 0
