"""`make demo`: distil a tiny student from a tiny teacher service, on this CPU, end to end.

Why this module exists: it is the whole path a user runs, in one command (nanochat's
habit): build the demo models if they are not cached (a teacher that solves 2–3-digit
addition with a `<think>` trace, and a weaker student with a different tokenizer and chat
template, `demo_models.py`), start `opd-teacher serve` on the teacher as a child process
on a free loopback port, run OPD with the paper's recipe (teacher top-K LSM, K=32,
renormalised, top-p 0.9 rollouts, special-token masking) through the same `train(config)`
that `opd-train run` calls, print held-out accuracy before and after (greedy decoding,
held-out problems disjoint from the training ones by construction), draw the curves,
and stop the service with SIGTERM.

The run directory keeps `config.yaml` (rerun it with `opd-train run`), `metrics.jsonl`,
`eval.jsonl`, checkpoints and `curves.png`. A second `make demo` resumes that run, so it
finishes at once; `--fresh` starts over.

What it does not know: anything the library does not already do; it only wires it up.
It needs `opd-teacher` installed beside `opd-client[train]` (as `make install` does).

    python -m opd_client.train.demo                   # the whole demo (~5 min on 2 cores)
    python -m opd_client.train.demo --steps 40 --run-dir runs/quick
    python -m opd_client.train.demo --multi           # two tasks, two teachers (demo_multi.py)
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from opd_client import SyncTeacherClient
from opd_client.train import demo_models, task

DEFAULT_RUN_DIR = Path("runs/demo")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def teacher_service(
    model_dir: Path, *args: str, ready_timeout_s: float = 180, threads: int | None = None
) -> Iterator[str]:
    """`opd-teacher serve --model model_dir` on a free loopback port, until SIGTERM on exit;
    yields its address once its health says SERVING. `threads` caps the service's torch
    threads (OMP_NUM_THREADS), for several services sharing a few cores."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    command = [sys.executable, "-m", "opd_teacher.cli", "serve", "--model", str(model_dir)]
    env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads)}
    server = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port), *args], env=env
    )
    try:
        with SyncTeacherClient(address, timeout_s=10) as teacher:
            teacher.wait_ready(timeout_s=ready_timeout_s)
        yield address
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def demo_config(
    student: Path, address: str, data_dir: Path, run_dir: Path, steps: int, heldout: int
) -> dict[str, Any]:
    """The paper's recipe on the demo task, as the YAML mapping `opd-train run` reads."""
    return {
        "student": str(student),
        "teachers": [{"address": address, "top_k": 32, "timeout_s": 60}],
        "prompts": str(data_dir / "train.jsonl"),
        "run_dir": str(run_dir),
        "loss": {"variant": "lsm", "support": "teacher_topk"},
        "masking": {"special_policy": "paper"},
        "rollout": {"top_p": 0.9, "temperature": 1.0, "max_new_tokens": 48, "batch_size": 32},
        "optim": {"lr": 3e-4, "schedule": "cosine", "warmup_steps": 5, "min_lr_ratio": 0.1},
        "prompts_per_step": 16,
        "max_steps": steps,
        "seed": 0,
        "checkpoint": {"interval": 25, "keep_last": 2},
        "eval": {
            "prompts": str(data_dir / f"heldout-{heldout}.jsonl"),
            "interval": max(1, steps // 4),
            "max_new_tokens": 48,
            "batch_size": 100,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run-dir", type=Path, default=None, help="run directory (runs/demo, runs/demo-multi)"
    )
    parser.add_argument("--steps", type=int, default=None, help="OPD optimiser steps (400; 300)")
    parser.add_argument(
        "--heldout", type=int, default=200, help="held-out problems to score (--multi: per task)"
    )
    parser.add_argument(
        "--multi",
        action="store_true",
        help="two tasks (addition, sorting), two teachers, routed by task (demo_multi.py)",
    )
    parser.add_argument("--fresh", action="store_true", help="delete the run directory first")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field"
    )
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 300 if args.multi else 400
    if args.steps < 1 or args.heldout < 1:
        parser.error("--steps and --heldout must be >= 1")
    if args.multi:
        from opd_client.train.demo_multi import DEFAULT_RUN_DIR as MULTI_RUN_DIR
        from opd_client.train.demo_multi import run_multi_demo

        multi_dir = args.run_dir or MULTI_RUN_DIR
        return run_multi_demo(multi_dir, args.steps, args.heldout, args.fresh, args.set)
    args.run_dir = args.run_dir or DEFAULT_RUN_DIR
    began = time.perf_counter()
    print("1/4 demo models (built once, then cached)", flush=True)
    teacher_dir = demo_models.ensure_demo_teacher()
    student_dir = demo_models.ensure_demo_student("cross")
    for name, path in (("teacher", teacher_dir), ("student", student_dir)):
        info = demo_models.read_info(path)
        print(
            f"    {name}: {path.name}  held-out accuracy {info['heldout_accuracy']:.1%} "
            f"(built in {info['build_seconds']} s)",
            flush=True,
        )
    run_dir: Path = args.run_dir.resolve()  # the config's paths are relative to its own file
    if args.fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    data_dir = run_dir / "data"
    task.write_jsonl(task.make_records(4000, "train", seed=0), data_dir / "train.jsonl")
    task.write_jsonl(
        task.make_records(args.heldout, "heldout", seed=0),
        data_dir / f"heldout-{args.heldout}.jsonl",
    )

    from opd_client.train.config_load import load_config
    from opd_client.train.loop import train
    from opd_client.train.plots import plot_runs

    print("2/4 teacher service", flush=True)
    with teacher_service(teacher_dir) as address:
        print(f"    serving {teacher_dir.name} on {address}", flush=True)
        raw = demo_config(student_dir, address, data_dir, run_dir, args.steps, args.heldout)
        config_path = run_dir / "demo.yaml"
        config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
        print(f"3/4 OPD for {args.steps} steps (config: {config_path})", flush=True)
        result = train(load_config(config_path, args.set), allow_teacher_change=False)
    print("4/4 results", flush=True)
    from opd_client.train.evaluate import EVAL_FILE
    from opd_client.train.metrics import read_metrics

    evals = read_metrics(run_dir, EVAL_FILE)
    curves = plot_runs([run_dir], run_dir / "curves.png", ["LSM, cross-tokenizer"])
    first, last = evals[0], evals[-1]
    print(
        f"    held-out accuracy: {first['eval_accuracy']:.1%} before (step {first['step']}) -> "
        f"{last['eval_accuracy']:.1%} after (step {last['step']}), n={last['eval_n']}, greedy",
        flush=True,
    )
    print(f"    steps run now: {result.steps_done}; curves: {curves}", flush=True)
    print(f"    demo took {time.perf_counter() - began:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
