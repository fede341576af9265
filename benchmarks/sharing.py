"""One shared teacher against one teacher per trainer job, at 1, 2, 4 and 8 jobs, in one run.

    .venv/bin/python benchmarks/sharing.py [--quick] [--json-out FILE] [--model tiny|llama-58m]

Why it exists: opd runs one teacher process for many student jobs (DESIGN.md §2); what
users would otherwise run is a teacher loaded inside every trainer. This measures both
layouts on the same machine, with the same workload, in the same run.

A job (benchmarks/sharing_job.py) is the teacher-facing part of an opd-train step in its
own process: per step it scores 8 rollout-shaped sequences (prompt 16-32 + response
32-128 tokens, the same lengths in every job, random ids, K = 32, `score_from` at the
last prompt token), then does fixed student-side work standing in for rollout + backward
(`--student-matmuls` float32 256x256 matmuls, 33.6 MFLOP each; 0 = none). Each job warms
up on one sequence, untimed; then all N are released together for `--steps` steps (no
step starts after `--cell-timeout-s`).
  * shared: every job talks to one `opd-teacher serve` (hf backend, default batching,
    started once for the run) over one ScoreStream per step, under its own client name.
  * co-located: every job loads the model itself and scores through the service's own
    HFEngine and Batcher in-process (same defaults, no gRPC): N copies of the teacher.
The two layouts alternate within each N. Every process, the teacher too, gets `--threads`
torch threads (default 1). The default model is the ~58M-parameter random Llama of
benchmarks/teacher.py, so teacher time is a real share of a step; `--model tiny` leaves
almost only the service's overhead.

Reported per layout and N: aggregate scored positions/s; per-job step time (mean, p50,
p99); fairness = max/min per-job positions/s over the window in which all N jobs ran
(release to the first job's last answer, counting sequences as they are answered; with
few steps it mostly shows how far the jobs drifted apart, up to one step); CPU ms per
scored position of all processes less the student work (less sensitive than wall time to
other programs on the machine, whose CPU use `other_cpu_cores` records); memory: the
teacher's RSS, the jobs' summed RSS and the PSS of all of them. PSS is the fair total:
the jobs fork from one process that imported torch, and transformers maps safetensors
weights from the file, so on a CPU the N co-located teachers share most weight pages
through the page cache (RSS counts them N times; on a GPU each process holds its own
copy). For the shared layout also: the teacher's CPU cores in use, its mean sequences
per engine batch and each client's share of scored positions from its Prometheus
metrics, read when the first job finished. On a CPU the shared teacher runs one forward
pass at a time on `--threads` cores while N co-located teachers spread over every core;
cross-job batching pays off on an accelerator, so read a CPU run for overhead, CPU and
memory per position.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import print_json, print_table
from sharing_job import (
    MATMUL_GFLOP,
    MATMUL_SIZE,
    PROMPT_TOKENS,
    RESPONSE_TOKENS,
    SEQS_PER_STEP,
    TOP_K,
    JobSpec,
    job_main,
    proc_memory,
)

JOB_COUNTS = (1, 2, 4, 8)
MIB = 1 << 20


@dataclass
class Cell:
    """One layout at one job count: times in ms or s, memory in MiB, fairness >= 1."""

    model: str
    layout: str
    jobs: int
    steps: int
    positions: int
    wall_s: float
    positions_per_s: float
    step_mean_ms: float
    step_p50_ms: float
    step_p99_ms: float
    score_p50_ms: float
    student_p50_ms: float
    fairness: float | None
    job_positions_per_s: list[float]
    cpu_ms_per_position: float
    scoring_cpu_ms_per_position: float
    jobs_rss_mib: float
    total_pss_mib: float
    startup_s: float
    other_cpu_cores: float  # used by programs other than this benchmark during the cell
    teacher_rss_mib: float | None = None
    teacher_cpu_cores: float | None = None
    mean_batch_sequences: float | None = None
    client_share: list[float] | None = None


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def system_busy_cpu_s() -> float:
    """CPU seconds every core has spent busy since boot (/proc/stat, all but idle/iowait)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class Teacher:
    """`opd-teacher serve` on free ports (gRPC and Prometheus), for the whole run."""

    def __init__(self, model_dir: Path) -> None:
        from opd_teacher.demo import free_port

        self.port, self.metrics_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "opd_teacher.cli", "serve", "--model", str(model_dir),
             "--backend", "hf", "--host", "127.0.0.1", "--port", str(self.port),
             "--metrics-port", str(self.metrics_port), "--log-level", "warning"]
        )  # fmt: skip

    def wait_ready(self) -> None:
        from opd_client import TeacherClient

        async def ready() -> None:
            async with TeacherClient(self.address, timeout_s=60) as client:
                for _ in range(150):
                    if self.process.poll() is not None:
                        raise RuntimeError(f"opd-teacher serve exited: {self.process.returncode}")
                    with contextlib.suppress(TimeoutError):
                        return await client.wait_ready(timeout_s=2)
                raise TimeoutError(f"teacher at {self.address} not ready after 300 s")

        asyncio.run(ready())

    def metrics(self) -> dict[str, float]:
        """Every sample of the Prometheus page, keyed 'name{label=value,...}'."""
        from prometheus_client.parser import text_string_to_metric_families

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as page:
            text = page.read().decode()
        return {
            f"{s.name}{{{','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))}}}": s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def job_context(model_type: str) -> Any:
    """Jobs fork from one server process that imported torch, transformers (with the
    model's architecture), gRPC and opd once, running nothing and starting no threads:
    eight fresh imports take a minute on two cores, which would dwarf the timed steps."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(
        ["__main__", "torch", "transformers",
         f"transformers.models.{model_type}.modeling_{model_type}", "grpc", "opd_client",
         "opd_teacher.engine.hf", "opd_teacher.batcher", "sharing_job"]
    )  # fmt: skip
    return context


def run_cell(
    context: Any, model: str, specs: list[JobSpec], timeout_s: float, teacher: Teacher | None
) -> Cell:
    spawned = time.monotonic()
    conns, processes = [], []
    for spec in specs:
        parent_end, child_end = context.Pipe()
        processes.append(context.Process(target=job_main, args=(spec, child_end), daemon=True))
        processes[-1].start()
        child_end.close()
        conns.append(parent_end)
    view: dict[str, Any] = {}
    finished = False
    try:
        _receive(conns, "ready", 600)
        startup_s = time.monotonic() - spawned
        if teacher:
            view = {"before": teacher.metrics(), "cpu": proc_cpu_s(teacher.process.pid)}
        system_cpu_s = system_busy_cpu_s()
        deadline = time.monotonic() + timeout_s
        for conn in conns:
            conn.send(deadline)

        def first_done() -> None:
            if teacher:
                view["first_done"] = teacher.metrics()

        results = _receive(conns, "done", timeout_s + 600, first_done)
        system_cpu_s = system_busy_cpu_s() - system_cpu_s
        if teacher:
            view["after"] = teacher.metrics()
            view["cpu"] = proc_cpu_s(teacher.process.pid) - view["cpu"]
            view["memory"] = proc_memory(teacher.process.pid)
        finished = True
    finally:
        for process in processes:
            process.join(timeout=60 if finished else 0)
            if process.is_alive():
                process.kill()
                process.join()
    return summarise(model, specs, results, startup_s, system_cpu_s, view)


def _receive(
    conns: list[Connection], kind: str, timeout_s: float, on_first: Any = None
) -> list[Any]:
    """One `kind` message from every job, in job order; a job's error is raised here."""
    payloads: dict[int, Any] = {}
    deadline = time.monotonic() + timeout_s
    while len(payloads) < len(conns):
        waiting = [c for i, c in enumerate(conns) if i not in payloads]
        ready = wait(waiting, deadline - time.monotonic())
        if not ready:
            raise TimeoutError(f"jobs did not report {kind!r} within {timeout_s:.0f} s")
        for conn in ready:
            assert isinstance(conn, Connection)
            try:
                what, payload = conn.recv()
            except EOFError:
                raise RuntimeError("a job process died without a report") from None
            if what == "error":
                raise RuntimeError(f"a job failed:\n{payload}")
            if not payloads and on_first is not None:
                on_first()
            payloads[conns.index(conn)] = payload
    return [payloads[i] for i in range(len(conns))]


def summarise(
    model: str,
    specs: list[JobSpec],
    results: list[dict[str, Any]],
    startup_s: float,
    system_cpu_s: float,
    view: dict[str, Any],
) -> Cell:
    """One Cell from the jobs' reports and, shared layout only, the teacher's `view`."""
    steps = [s for r in results for s in r["steps"]]
    released = min(r["steps"][0][0] for r in results)
    wall = max(s[2] for s in steps) - released
    positions = sum(s[3] for s in steps)
    step_ms = np.array([1000 * (end - start) for start, _, end, _ in steps])
    score_ms = np.array([1000 * (scored - start) for start, scored, _, _ in steps])
    # Per-job throughput while all N jobs were running, sequence by sequence.
    window_end = min(r["steps"][-1][1] for r in results)
    per_job = [
        sum(p for t, p in r["answers"] if t <= window_end) / (window_end - released)
        for r in results
    ]
    teacher_cpu_s = view.get("cpu", 0.0)
    cpu_s = sum(r["cpu_s"] for r in results) + teacher_cpu_s
    student_cpu_s = sum(r["student_cpu_s"] for r in results)
    teacher_memory = view.get("memory", {})
    cell = Cell(
        model=model,
        layout=specs[0].layout,
        jobs=len(specs),
        steps=len(steps),
        positions=positions,
        wall_s=round(wall, 2),
        positions_per_s=round(positions / wall, 1),
        step_mean_ms=round(float(step_ms.mean()), 1),
        step_p50_ms=round(float(np.percentile(step_ms, 50)), 1),
        step_p99_ms=round(float(np.percentile(step_ms, 99)), 1),
        score_p50_ms=round(float(np.percentile(score_ms, 50)), 1),
        student_p50_ms=round(float(np.percentile(step_ms - score_ms, 50)), 1),
        fairness=round(max(per_job) / min(per_job), 3) if min(per_job) > 0 else None,
        job_positions_per_s=[round(x, 1) for x in per_job],
        cpu_ms_per_position=round(1000 * cpu_s / positions, 3),
        scoring_cpu_ms_per_position=round(1000 * (cpu_s - student_cpu_s) / positions, 3),
        jobs_rss_mib=round(sum(r["memory"]["rss"] for r in results) / MIB, 1),
        total_pss_mib=round(
            (sum(r["memory"]["pss"] for r in results) + teacher_memory.get("pss", 0)) / MIB, 1
        ),
        startup_s=round(startup_s, 1),
        other_cpu_cores=round(max(0.0, system_cpu_s - cpu_s) / wall, 2),
    )
    if view:
        before = view["before"]
        cell.teacher_rss_mib = round(teacher_memory["rss"] / MIB, 1)
        cell.teacher_cpu_cores = round(teacher_cpu_s / wall, 2)
        batches = view["after"]["opd_teacher_batch_sequences_count{}"]
        batches -= before["opd_teacher_batch_sequences_count{}"]
        sequences = view["after"]["opd_teacher_batch_sequences_sum{}"]
        sequences -= before["opd_teacher_batch_sequences_sum{}"]
        cell.mean_batch_sequences = round(sequences / batches, 2) if batches else None
        served = [
            view["first_done"].get(key, 0.0) - before.get(key, 0.0)
            for key in (
                f"opd_teacher_scored_positions_total{{client={s.client_name}}}" for s in specs
            )
        ]
        cell.client_share = [round(x / sum(served), 3) for x in served]
    return cell


def model_dir(name: str) -> Path:
    from opd_teacher.tiny import ensure_tiny_teacher

    tiny = ensure_tiny_teacher()
    if name == "tiny":
        return tiny
    from teacher import build_medium_model  # benchmarks/teacher.py: the ~58M random Llama

    return build_medium_model(tiny)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 steps per job (a smoke run)")
    parser.add_argument("--json-out", type=Path, help="also write the JSON report here")
    parser.add_argument("--model", choices=["tiny", "llama-58m"], default="llama-58m")
    parser.add_argument("--steps", type=int, help="timed steps per job (default 6, quick 2)")
    parser.add_argument("--jobs", type=int, nargs="+", default=list(JOB_COUNTS))
    parser.add_argument("--student-matmuls", type=int, default=200, help="per step")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--cell-timeout-s", type=float, help="default 150, quick 60")
    args = parser.parse_args()
    steps = args.steps or (2 if args.quick else 6)
    timeout_s = args.cell_timeout_s or (60.0 if args.quick else 150.0)
    # Inherited by the teacher and the fork server: one thread count everywhere, no bars.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    started = time.monotonic()
    directory = model_dir(args.model)
    model_config = json.loads((directory / "config.json").read_text())
    context = job_context(model_config["model_type"])
    teacher = Teacher(directory)
    cells: list[Cell] = []
    try:
        teacher.wait_ready()
        for turn, jobs in enumerate(args.jobs):
            layouts = ("shared", "co-located") if turn % 2 == 0 else ("co-located", "shared")
            for layout in layouts:
                specs = [
                    JobSpec(layout, i, str(directory), int(model_config["vocab_size"]),
                            teacher.address, f"sharing-{layout}-{jobs}x-job{i}", steps,
                            args.student_matmuls, args.threads)
                    for i in range(jobs)
                ]  # fmt: skip
                shared = teacher if layout == "shared" else None
                cells.append(run_cell(context, args.model, specs, timeout_s, shared))
                print(f"{layout} x{jobs}: {cells[-1].positions_per_s} pos/s", file=sys.stderr)
    finally:
        teacher.stop()
    report = build_report(args, steps, timeout_s, cells, time.monotonic() - started)
    print_cells(cells)
    print_json(report)
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2, sort_keys=True))
    return 0


def build_report(
    args: argparse.Namespace, steps: int, timeout_s: float, cells: list[Cell], wall_s: float
) -> dict[str, Any]:
    from opd_teacher.config import BatcherConfig

    by = {(c.layout, c.jobs): c for c in cells}
    return {
        "model": args.model,
        "workload": {
            "sequences_per_step": SEQS_PER_STEP,
            "prompt_tokens": list(PROMPT_TOKENS),
            "response_tokens": list(RESPONSE_TOKENS),
            "top_k": TOP_K,
            "steps_per_job": steps,
            "student_work_per_step": f"{args.student_matmuls} float32 {MATMUL_SIZE}x"
            f"{MATMUL_SIZE} matmuls, {args.student_matmuls * MATMUL_GFLOP:.1f} GFLOP",
            "threads_per_process": args.threads,
            "cell_timeout_s": timeout_s,
            "teacher_batcher": asdict(BatcherConfig()),
            "cpu_count": os.cpu_count(),
        },
        "shared_over_colocated": {
            str(n): {
                "positions_per_s": round(
                    by["shared", n].positions_per_s / by["co-located", n].positions_per_s, 3
                ),
                "scoring_cpu_per_position": round(
                    by["shared", n].scoring_cpu_ms_per_position
                    / by["co-located", n].scoring_cpu_ms_per_position,
                    3,
                ),
                "total_pss": round(
                    by["shared", n].total_pss_mib / by["co-located", n].total_pss_mib, 3
                ),
            }
            for n in args.jobs
        },
        "cells": [asdict(c) for c in cells],
        "wall_s": round(wall_s, 1),
    }


def print_cells(cells: list[Cell]) -> None:
    def dash(value: Any) -> Any:
        return "-" if value is None else value

    headers = ["layout", "jobs", "steps", "pos/s", "step ms", "p50", "p99", "fair",
               "score cpu ms/pos", "teacher RSS MiB", "jobs RSS MiB", "all PSS MiB",
               "teacher cores", "batch seqs", "client share", "others' cores"]  # fmt: skip
    rows = []
    for c in sorted(cells, key=lambda c: (c.jobs, c.layout)):
        share = c.client_share and f"{min(c.client_share):.2f}-{max(c.client_share):.2f}"
        rows.append(
            [c.layout, c.jobs, c.steps, f"{c.positions_per_s:.0f}", f"{c.step_mean_ms:.0f}",
             f"{c.step_p50_ms:.0f}", f"{c.step_p99_ms:.0f}",
             "-" if c.fairness is None else f"{c.fairness:.2f}",
             c.scoring_cpu_ms_per_position, dash(c.teacher_rss_mib), c.jobs_rss_mib,
             c.total_pss_mib, dash(c.teacher_cpu_cores), dash(c.mean_batch_sequences),
             dash(share), c.other_cpu_cores]
        )  # fmt: skip
    print(f"model: {cells[0].model}")
    print_table(headers, rows)


if __name__ == "__main__":
    sys.exit(main())
