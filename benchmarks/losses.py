"""Benchmark the LSM loss paths at Qwen2.5-0.5B's shapes: time and extra peak memory.

    bash benchmarks/setup_bench_env.sh          # once: .venv-bench with trl==1.16.0
    .venv/bin/python benchmarks/losses.py       # T = 2,048 then 8,192; table + JSON
    .venv/bin/python benchmarks/losses.py --t 512 --json out.json   # a quick run

Why this script exists: the fused support path (`opd_client.losses.support_logits`) is the
reason the trainer can afford LSM on a CPU or a small GPU; this measures what it saves
against what a user would otherwise write. Every path does one forward and one backward of
the same loss (h.grad and W.grad both produced; the LM head is trained):

  (a) naive     log_softmax(h @ Wᵀ) in fp32 → gather at the support → LSM
  (b) chunked   the same per chunk of positions, each chunk's full logits recomputed in
                backward (activation checkpointing, as chunked cross-entropy does)
  (c) fused     support_logits(h, W, S) → LSM: z at the support only, chunked custom autograd
  (d) trl       TRL's `generalized_jsd_loss` on full logits (a full teacher row is an input),
                run in the separate `.venv-bench` with trl==1.16.0 and torch==2.13.0

Each path runs in its own process, under an address-space limit, so peaks do not mix and
an overrun fails alone. Extra peak memory = the process's RSS high-water mark minus what the
inputs and parameters held before the step, minus the gradients (W.grad alone is V·D·4 ≈
0.54 GB for every path; it is reported but not part of the ratios). Paths at the larger T
are first estimated from the smaller run and skipped when they would not fit.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    GIB,
    MB,
    limit_extra_memory,
    mem_available_bytes,
    peak_rss_bytes,
    print_json,
    print_table,
    reset_peak_rss,
    rss_bytes,
)

ROOT = Path(__file__).resolve().parents[1]
PATHS = ("a_naive", "b_chunked", "c_fused", "d_trl")
VOCAB, HIDDEN, K = 151_936, 896, 32  # Qwen2.5-0.5B: vocab_size, hidden_size; the paper's K
CHUNK_B = 256  # positions per chunk for (b)
TARGET_SPEEDUP, TARGET_MEMORY = 20.0, 20.0
RESULT_TAG = "RESULT "


# --- worker: one path, one process ------------------------------------------------------


def _inputs(t_size: int, with_teacher_logits: bool, seed: int = 0) -> dict[str, Any]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    lm_head_VD = (torch.randn(VOCAB, HIDDEN, generator=gen) * 0.05).requires_grad_(True)
    hidden_BTD = torch.randn(1, t_size, HIDDEN, generator=gen).requires_grad_(True)
    # K distinct ids per position: one id from each of K equal bands of the vocabulary.
    band = VOCAB // K
    ids_BTK = torch.randint(0, band, (1, t_size, K), generator=gen) + torch.arange(K) * band
    teacher_BTK = torch.log_softmax(torch.randn(1, t_size, K, generator=gen) * 2, -1) - 0.1
    teacher_BTK = teacher_BTK.sort(-1, descending=True).values
    slot_BTK = torch.rand(1, t_size, K, generator=gen) < 0.95
    mask_BT = torch.rand(1, t_size, generator=gen) < 0.9
    out = {
        "W": lm_head_VD,
        "h": hidden_BTD,
        "ids": ids_BTK,
        "teacher": teacher_BTK,
        "slot": slot_BTK,
        "mask": mask_BT,
    }
    if with_teacher_logits:
        out["teacher_logits"] = torch.randn(1, t_size, VOCAB, generator=gen)
    return out


def _step_fn(path: str, x: dict[str, Any], trl_beta: float) -> Any:
    """A closure running one forward and returning the scalar loss."""
    import torch

    if path == "d_trl":
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.gkd.gkd_trainer import GKDTrainer

        labels_BT = torch.where(x["mask"], 0, -100)  # token-mean over unmasked positions

        def step_d() -> Any:
            logits_BTV = x["h"] @ x["W"].T
            return GKDTrainer.generalized_jsd_loss(
                logits_BTV, x["teacher_logits"], labels=labels_BT, beta=trl_beta
            )

        return step_d

    from torch.utils.checkpoint import checkpoint

    from opd_client.losses import SupportBatch, support_logits, truncated_rkl

    batch = SupportBatch(x["ids"], x["teacher"], x["slot"], x["mask"])

    def full_chunk(h_BCD: Any, w_VD: Any, ids_BCK: Any) -> Any:
        return torch.log_softmax((h_BCD @ w_VD.T).float(), -1).gather(-1, ids_BCK)

    def step_a() -> Any:
        return truncated_rkl(full_chunk(x["h"], x["W"], x["ids"]), batch)

    def step_b() -> Any:
        t_size = x["h"].shape[1]
        parts = [
            checkpoint(
                full_chunk,
                x["h"][:, s : s + CHUNK_B],
                x["W"],
                x["ids"][:, s : s + CHUNK_B],
                use_reentrant=False,
            )
            for s in range(0, t_size, CHUNK_B)
        ]
        return truncated_rkl(torch.cat(parts, dim=1), batch)

    def step_c() -> Any:
        return truncated_rkl(support_logits(x["h"], x["W"], x["ids"]), batch)

    return {"a_naive": step_a, "b_chunked": step_b, "c_fused": step_c}[path]


def worker(path: str, t_size: int, budget_bytes: int, repeats: int, trl_beta: float) -> dict:
    import torch

    x = _inputs(t_size, with_teacher_logits=path == "d_trl")
    step = _step_fn(path, x, trl_beta)
    gc.collect()
    reset_peak_rss()
    base = rss_bytes()
    limit_extra_memory(max(budget_bytes - base, 0))
    times = []
    loss = float("nan")
    for _ in range(repeats):
        x["h"].grad = None
        x["W"].grad = None
        start = time.perf_counter()
        out = step()
        out.backward()
        times.append(time.perf_counter() - start)
        loss = float(out.detach())
    peak = peak_rss_bytes() - base
    grads = x["W"].grad.numel() * 4 + x["h"].grad.numel() * 4
    return {
        "path": path,
        "T": t_size,
        "time_s": min(times),
        "times_s": times,
        "loss": loss,
        "peak_above_inputs_bytes": peak,
        "grads_bytes": grads,
        "extra_peak_bytes": max(peak - grads, 0),
        "h_grad_norm": float(x["h"].grad.norm()),
        "W_grad_norm": float(x["W"].grad.norm()),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


# --- parent: estimate, run each path in its own process, report -----------------------


def _python_for(path: str, bench_python: Path) -> str:
    return str(bench_python) if path == "d_trl" else sys.executable


def _run_one(path: str, t_size: int, args: argparse.Namespace, budget: int) -> dict:
    repeats = args.fast_repeats if path == "c_fused" else 1
    cmd = [
        _python_for(path, args.bench_python),
        __file__,
        "--worker",
        path,
        "--t",
        str(t_size),
        "--budget-bytes",
        str(budget),
        "--repeats",
        str(repeats),
        "--trl-beta",
        str(args.trl_beta),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout_s)
    except subprocess.TimeoutExpired:
        return {"path": path, "T": t_size, "status": f"failed (over {args.timeout_s} s)"}
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return {**json.loads(line[len(RESULT_TAG) :]), "status": "ok"}
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"path": path, "T": t_size, "status": f"failed (rc {proc.returncode}): {tail[0][:160]}"}


def _input_bytes(path: str, t_size: int) -> int:
    """Inputs, parameters and gradients: W and W.grad, h and h.grad, (d) the teacher rows."""
    base = 2 * VOCAB * HIDDEN * 4 + 2 * t_size * HIDDEN * 4 + t_size * K * 17
    return base + (t_size * VOCAB * 4 if path == "d_trl" else 0)


def _estimate_bytes(path: str, t_size: int, measured: dict[str, dict]) -> int:
    """Whole-process need at T: inputs + gradients + extra peak scaled linearly in T from
    the smaller run (conservative for the chunked paths, whose extra memory is per chunk),
    or, without one, the [T, V] fp32 activations the path keeps (≈ 4 for (a) and (d))."""
    full_tv = t_size * VOCAB * 4
    prior = measured.get(path)
    if prior and prior.get("status") == "ok":
        extra = prior["extra_peak_bytes"] * t_size / prior["T"]
    else:
        extra = {"a_naive": 4 * full_tv, "d_trl": 5 * full_tv}.get(path, 2 * CHUNK_B * VOCAB * 4)
    return int(_input_bytes(path, t_size) + extra + 0.5 * GIB)  # + interpreter and torch


def _row(r: dict, by_path: dict[str, dict]) -> list[Any]:
    if r.get("status") != "ok":
        return [r["T"], r["path"], r["status"], "", "", "", "", ""]
    c = by_path.get("c_fused", {})
    ok_c = c.get("status") == "ok"
    speed = f"{r['time_s'] / c['time_s']:.1f}x" if ok_c else ""
    mem = f"{r['extra_peak_bytes'] / max(c['extra_peak_bytes'], 1):.1f}x" if ok_c else ""
    return [
        r["T"],
        r["path"],
        f"{r['time_s']:.3f}",
        f"{r['extra_peak_bytes'] / MB:,.0f}",
        f"{r['grads_bytes'] / MB:,.0f}",
        f"{r['loss']:.6f}",
        speed,
        mem,
    ]


def _ratios(by_path: dict[str, dict]) -> dict[str, Any]:
    c = by_path.get("c_fused")
    if not c or c.get("status") != "ok":
        return {}
    out: dict[str, Any] = {}
    for name, r in by_path.items():
        if name == "c_fused" or r.get("status") != "ok":
            continue
        out[f"time_{name}_over_c"] = r["time_s"] / c["time_s"]
        out[f"extra_mem_{name}_over_c"] = r["extra_peak_bytes"] / max(c["extra_peak_bytes"], 1)
    a = by_path.get("a_naive")
    if a and a.get("status") == "ok":
        out["loss_abs_diff_c_vs_a"] = abs(c["loss"] - a["loss"])
        out["W_grad_norm_rel_diff_c_vs_a"] = abs(c["W_grad_norm"] / a["W_grad_norm"] - 1)
        out["h_grad_norm_rel_diff_c_vs_a"] = abs(c["h_grad_norm"] / a["h_grad_norm"] - 1)
    return out


def _targets(ratios: dict[str, Any]) -> dict[str, bool]:
    checks = {}
    for p in ("a_naive", "b_chunked", "d_trl"):
        if f"time_{p}_over_c" in ratios:
            checks[f"c_{TARGET_SPEEDUP:.0f}x_faster_than_{p}"] = (
                ratios[f"time_{p}_over_c"] >= TARGET_SPEEDUP
            )
    for p in ("a_naive", "d_trl"):
        if f"extra_mem_{p}_over_c" in ratios:
            checks[f"c_{TARGET_MEMORY:.0f}x_less_memory_than_{p}"] = (
                ratios[f"extra_mem_{p}_over_c"] >= TARGET_MEMORY
            )
    if "extra_mem_b_chunked_over_c" in ratios:
        checks["c_less_memory_than_b_chunked"] = ratios["extra_mem_b_chunked_over_c"] > 1
    if "loss_abs_diff_c_vs_a" in ratios:
        checks["c_loss_equals_a_to_1e-5"] = ratios["loss_abs_diff_c_vs_a"] <= 1e-5
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--t", type=int, nargs="+", default=[2048, 8192], help="positions T")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--memory-gib", type=float, default=24.0, help="budget per process")
    parser.add_argument("--fast-repeats", type=int, default=3, help="repeats of (c); min reported")
    parser.add_argument("--trl-beta", type=float, default=1.0, help="β for (d); 1 = reverse KL")
    parser.add_argument("--timeout-s", type=int, default=900)
    parser.add_argument(
        "--bench-python", type=Path, default=ROOT / ".venv-bench" / "bin" / "python"
    )
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    parser.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--budget-bytes", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(
            RESULT_TAG
            + json.dumps(
                worker(args.worker, args.t[0], args.budget_bytes, args.repeats, args.trl_beta)
            )
        )
        return 0

    if "d_trl" in args.paths and not args.bench_python.exists():
        print(
            f"{args.bench_python} missing: run `bash benchmarks/setup_bench_env.sh`",
            file=sys.stderr,
        )
        return 2
    # The budget is 24 GiB or what the machine has free now, whichever is smaller.
    budget = int(min(args.memory_gib * GIB, mem_available_bytes() - 1 * GIB))
    results: list[dict] = []
    measured: dict[str, dict] = {}
    for t_size in sorted(args.t):
        for path in args.paths:
            need = _estimate_bytes(path, t_size, measured)
            if need > budget:
                r = {"path": path, "T": t_size, "status": f"skipped (needs ≈ {need / GIB:.1f} GB)"}
            else:
                r = _run_one(path, t_size, args, budget)
            r["estimated_bytes"] = need
            results.append(r)
            print(f"  T={t_size} {path}: {r.get('status')} {r.get('time_s', '')}", file=sys.stderr)
            if r.get("status") == "ok":
                measured[path] = r

    headers = ["T", "path", "time s", "extra MB", "grads MB", "loss", "time/c", "extra mem/c"]
    rows, ratios, targets = [], {}, {}
    for t_size in sorted(args.t):
        by_path = {r["path"]: r for r in results if r["T"] == t_size}
        rows += [_row(r, by_path) for r in by_path.values()]
        ratios[str(t_size)] = _ratios(by_path)
        targets[str(t_size)] = _targets(ratios[str(t_size)])
    print(f"V={VOCAB} D={HIDDEN} K={K}, fp32, fwd+bwd, budget {budget / GIB:.1f} GiB/process")
    print_table(headers, rows)
    report = {
        "benchmark": "losses",
        "config": {
            "V": VOCAB,
            "D": HIDDEN,
            "K": K,
            "chunk_b": CHUNK_B,
            "trl_beta": args.trl_beta,
            "budget_bytes": budget,
            "cpu_count": os.cpu_count(),
        },
        "results": results,
        "ratios": ratios,
        "targets_met": targets,
    }
    print_json(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, sort_keys=True))
    failed = [r for r in results if str(r.get("status", "")).startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
