"""`python -m opd_client.train.demo --multi`: one student, two tasks, two expert teachers.

Why this module exists: it is the several-teachers path a user runs, in one command. It
builds (or takes from the cache) the addition teacher (`demo_models.py`), the sorting
teacher and a two-task student partly competent at both (`multitask_models.py`; three
tokenizers, three chat templates), starts one `opd-teacher serve` per teacher, and runs
OPD with the demo's recipe (`demo.demo_config`, at lr 1e-4) and a `teachers:` list that
routes each prompt by its `task` — addition to the addition teacher, sorting to the
sorting teacher — through the same `train(config)` that `opd-train run` calls. It prints
held-out accuracy per task before and after and draws the curves (per-task accuracy,
per-teacher loss and student mass) into `<run_dir>/curves.png`. Like the default demo,
a second run resumes (and so finishes at once); `--fresh` starts over.

`multi_config` and `write_multi_data` are shared with `benchmarks/method.py --multi`.

What it does not know: anything the library does not already do; it only wires it up.

    python -m opd_client.train.demo --multi                 # ~10 min on 2 cores, cold
    python -m opd_client.train.demo --multi --steps 60 --run-dir runs/quick-multi
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml

from opd_client.train import demo_models, multitask_models, task
from opd_client.train.demo import demo_config, teacher_service

DEFAULT_RUN_DIR = Path("runs/demo-multi")
# name -> the tasks it scores, in the routed run; every prompt carries its task.
ROUTED: dict[str, tuple[str, ...]] = {"adder": ("addition",), "sorter": ("sorting",)}
TRAIN_PER_TASK = 2000


def write_multi_data(data_dir: Path, heldout_per_task: int) -> tuple[Path, Path]:
    """The two-task prompts file (train split, both tasks interleaved) and eval file
    (held-out split, `heldout_per_task` of each task); every line has its `task`."""
    train = task.write_jsonl(
        multitask_models.mixed_records(TRAIN_PER_TASK, "train", seed=0), data_dir / "train.jsonl"
    )
    heldout = task.write_jsonl(
        multitask_models.mixed_records(heldout_per_task, "heldout", seed=0),
        data_dir / f"heldout-2x{heldout_per_task}.jsonl",
    )
    return train, heldout


def multi_config(
    student: Path,
    teachers: Mapping[str, tuple[str, Sequence[str]]],
    prompts: Path,
    heldout: Path,
    run_dir: Path,
    steps: int,
) -> dict[str, Any]:
    """The demo's recipe (`demo_config`) with a `teachers:` list: name -> (address, the
    tasks it scores), lr 1e-4 and one torch thread. No `default_teacher`: every prompt
    names its task."""
    first = next(iter(teachers.values()))[0]
    raw = demo_config(student, first, prompts.parent, run_dir, steps, 1)
    raw["teachers"] = [
        {"name": name, "address": address, "top_k": 32, "timeout_s": 60, "tasks": list(tasks)}
        for name, (address, tasks) in teachers.items()
    ]
    raw["prompts"] = str(prompts)
    raw["eval"]["prompts"] = str(heldout)
    # At the one-task demo's 3e-4 this student's addition accuracy falls (53.5 % -> 30 % at
    # step 75, 42.5 % at step 300) while its sorting rises; at 1e-4 both rise.
    raw["optim"]["lr"] = 1e-4
    # Two teacher services (one thread each) and the trainer share the cores: one torch
    # thread here too, since an oversubscribed CPU makes every OpenMP wait spin.
    raw["torch_threads"] = 1
    return raw


def teacher_dirs() -> dict[str, Path]:
    """The cached addition and sorting teachers (built first when missing), by name."""
    return {
        "adder": demo_models.ensure_demo_teacher(),
        "sorter": multitask_models.ensure_sort_teacher(),
    }


def per_task(record: Mapping[str, Any]) -> dict[str, float]:
    """An eval record's accuracy per task."""
    return dict(record.get("eval_accuracy_by_task") or {})


def run_multi_demo(
    run_dir: Path, steps: int, heldout: int, fresh: bool, overrides: Sequence[str]
) -> int:
    """The whole --multi demo; returns the exit code."""
    from opd_client.train.config_load import load_config
    from opd_client.train.evaluate import EVAL_FILE
    from opd_client.train.loop import train
    from opd_client.train.metrics import read_metrics
    from opd_client.train.plots import plot_runs

    began = time.perf_counter()
    print("1/4 models (built once, then cached)", flush=True)
    teachers = teacher_dirs()
    student = multitask_models.ensure_multi_student()
    for name, path in (*teachers.items(), ("student", student)):
        print("    " + multitask_models.describe(name, path), flush=True)
    run_dir = run_dir.resolve()  # the config's paths are relative to its own file
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    prompts, heldout_path = write_multi_data(run_dir / "data", heldout)

    print("2/4 teacher services (one per teacher)", flush=True)
    with ExitStack() as stack:
        addresses = {
            name: stack.enter_context(teacher_service(path, threads=1))
            for name, path in teachers.items()
        }
        for name, address in addresses.items():
            print(f"    {name}: {teachers[name].name} on {address}, tasks {ROUTED[name]}")
        routes = {name: (addresses[name], tasks) for name, tasks in ROUTED.items()}
        raw = multi_config(student, routes, prompts, heldout_path, run_dir, steps)
        config_path = run_dir / "demo.yaml"
        config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
        print(f"3/4 OPD for {steps} steps, routed by task (config: {config_path})", flush=True)
        result = train(load_config(config_path, list(overrides)), allow_teacher_change=False)

    print("4/4 results", flush=True)
    evals = read_metrics(run_dir, EVAL_FILE)
    first, last = evals[0], evals[-1]
    before, after = per_task(first), per_task(last)
    print(f"    held-out accuracy, greedy, n={heldout} per task:", flush=True)
    print(
        f"    {'task':10s} {'step ' + str(first['step']):>10s} {'step ' + str(last['step']):>10s}"
    )
    for name in sorted(after):
        print(f"    {name:10s} {before.get(name, float('nan')):>10.1%} {after[name]:>10.1%}")
    curves = plot_runs([run_dir], run_dir / "curves.png", ["LSM, routed (adder + sorter)"])
    print(f"    steps run now: {result.steps_done}; curves: {curves}", flush=True)
    print(f"    demo took {time.perf_counter() - began:.0f} s", flush=True)
    return 0
