"""The method study on the demo task: which parts of the paper's recipe matter here.

    python benchmarks/method.py --quick            # 100 steps, 3 seeds (≈ 10 min on 2 cores)
    python benchmarks/method.py                    # 400 steps, 3 seeds (≈ 60 min)
    python benchmarks/method.py --quick --variants lsm,uniform_teacher --seeds 1
    python benchmarks/method.py --multi --quick    # two tasks, two teachers (method_multi.py)

Why this script exists: the paper's claims (teacher top-K LSM beats sampled-token OPD,
renormalisation is needed, top-p rollouts are needed, special-token masking is needed)
should be checked on our own toy with the same budget for every arm, and a control whose
teacher is uniform must not improve (if it did, the gain would come from somewhere else).
Every arm starts from the same demo student and runs the demo's config
(`opd_client.train.demo.demo_config`) with one change; each is run for several seeds,
in-process, against a teacher service started once per teacher model. It prints a table
(final held-out accuracy mean ± std, steps to a target accuracy, gradient-norm variance,
aligned fraction, steps per run) and JSON, and draws the LSM-family curves.

Report honestly where the toy does not reproduce the paper: this is a 0.4 M-parameter
student on 2–3-digit addition, not a reasoning model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from common import print_json, print_table

from opd_client.train import demo_models, task
from opd_client.train.config_load import load_config
from opd_client.train.demo import demo_config, teacher_service
from opd_client.train.evaluate import EVAL_FILE
from opd_client.train.loop import train
from opd_client.train.metrics import read_metrics
from opd_client.train.plots import plot_runs

# arm -> (teacher, student kind, overrides on top of the demo config)
ARMS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "lsm": ("real", "cross", {}),
    "sampled_token": ("real", "cross", {"loss.variant": "sampled_token"}),
    "unnormalized": ("real", "cross", {"loss.variant": "unnormalized"}),
    "lsm_no_top_p": ("real", "cross", {"rollout.top_p": 1.0}),
    "lsm_no_masking": ("real", "cross", {"masking.special_policy": "none"}),
    "uniform_teacher": ("uniform", "cross", {}),
    "lsm_same_tokenizer": ("real", "same", {}),
}


def uniform_teacher(real: Path, out: Path) -> Path:
    """The real teacher with a zero LM head: every next token equally likely."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out / "config.json").is_file():
        return out
    model = AutoModelForCausalLM.from_pretrained(real)
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(real).save_pretrained(out)
    return out


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def run_arm(
    arm: str, seed: int, address: str, student: Path, data: Path, out: Path, args: Any
) -> dict[str, Any]:
    run_dir = out / f"{arm}-seed{seed}"
    raw = demo_config(student, address, data, run_dir, args.steps, args.heldout)
    raw["seed"] = seed
    raw["progress"] = False
    raw["eval"]["interval"] = max(1, args.steps // 5)
    for key, value in ARMS[arm][2].items():
        _set(raw, key, value)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "arm.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    began = time.perf_counter()
    result = train(load_config(run_dir / "arm.yaml"))
    evals = read_metrics(run_dir, EVAL_FILE)
    rows = read_metrics(run_dir)
    grad = [r["grad_norm"] for r in rows if r.get("grad_norm") is not None]
    reached = [e["step"] for e in evals if e["eval_accuracy"] >= args.target]
    return {
        "arm": arm,
        "seed": seed,
        "steps": result.steps_done,
        "seconds": round(time.perf_counter() - began, 1),
        "accuracy_before": evals[0]["eval_accuracy"],
        "accuracy_after": evals[-1]["eval_accuracy"],
        "steps_to_target": reached[0] if reached else None,
        "grad_norm_var": statistics.pvariance(grad) if len(grad) > 1 else 0.0,
        "aligned_fraction": statistics.fmean(r["aligned_fraction"] for r in rows),
        "run_dir": str(run_dir),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 steps a run (≈ 10 min)")
    parser.add_argument("--steps", type=int, default=None, help="steps a run (default 400)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per arm, >= 1")
    parser.add_argument(
        "--heldout", type=int, default=None, help="held-out problems (200; --multi: per task)"
    )
    parser.add_argument("--target", type=float, default=0.5, help="accuracy for steps-to-target")
    parser.add_argument("--variants", default=None, help="comma-separated arms (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="runs dir (.cache/bench/method)")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument(
        "--multi",
        action="store_true",
        help="the two-task study: routed teachers vs one teacher for both (method_multi.py)",
    )
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    if args.multi:
        import method_multi

        args.out = args.out or Path(".cache/bench/method-multi")
        return method_multi.run(args)
    args.heldout = args.heldout or 200
    args.variants = args.variants or ",".join(ARMS)
    args.out = args.out or Path(".cache/bench/method")
    args.steps = args.steps or (100 if args.quick else 400)
    arms = [a.strip() for a in args.variants.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or args.seeds < 1:
        parser.error(f"unknown arms {unknown} (choose from {', '.join(ARMS)})" if unknown else "")
    out = args.out.resolve()
    data = out / "data"
    task.write_jsonl(task.make_records(4000, "train", seed=0), data / "train.jsonl")
    task.write_jsonl(
        task.make_records(args.heldout, "heldout", seed=0), data / f"heldout-{args.heldout}.jsonl"
    )
    real = demo_models.ensure_demo_teacher()
    teachers = {"real": real}
    if any(ARMS[a][0] == "uniform" for a in arms):
        teachers["uniform"] = uniform_teacher(real, out / "uniform-teacher")
    students = {k: demo_models.ensure_demo_student(k) for k in {ARMS[a][1] for a in arms}}
    results = []
    for name, model_dir in teachers.items():
        todo = [a for a in arms if ARMS[a][0] == name]
        if not todo:
            continue
        with teacher_service(model_dir) as address:
            for arm in todo:
                for seed in range(args.seeds):
                    r = run_arm(arm, seed, address, students[ARMS[arm][1]], data, out, args)
                    print(json.dumps(r), file=sys.stderr, flush=True)
                    results.append(r)
    table = []
    summary = []
    for arm in arms:
        rs = [r for r in results if r["arm"] == arm]
        acc = [r["accuracy_after"] for r in rs]
        reached = [r["steps_to_target"] for r in rs if r["steps_to_target"] is not None]
        row = {
            "arm": arm,
            "seeds": len(rs),
            "steps": rs[0]["steps"],
            "accuracy_before": rs[0]["accuracy_before"],
            "accuracy_mean": statistics.fmean(acc),
            "accuracy_std": statistics.pstdev(acc) if len(acc) > 1 else 0.0,
            "steps_to_target": statistics.fmean(reached) if reached else None,
            "reached_target": f"{len(reached)}/{len(rs)}",
            "grad_norm_var": statistics.fmean(r["grad_norm_var"] for r in rs),
            "aligned_fraction": statistics.fmean(r["aligned_fraction"] for r in rs),
        }
        summary.append(row)
        table.append(
            [
                arm,
                row["seeds"],
                row["steps"],
                f"{row['accuracy_before']:.3f}",
                f"{row['accuracy_mean']:.3f} ± {row['accuracy_std']:.3f}",
                "-" if row["steps_to_target"] is None else f"{row['steps_to_target']:.0f}",
                row["reached_target"],
                f"{row['grad_norm_var']:.2f}",
                f"{row['aligned_fraction']:.3f}",
            ]
        )
    print_table(
        [
            "arm",
            "seeds",
            "steps/run",
            "acc before",
            "acc after",
            f"steps to {args.target:.0%}",
            "reached",
            "grad-norm var",
            "aligned",
        ],
        table,
    )
    curves = plot_runs(
        [Path(r["run_dir"]) for r in results if r["seed"] == 0],
        out / "curves.png",
        [r["arm"] for r in results if r["seed"] == 0],
    )
    report = {"benchmark": "method", "steps": args.steps, "arms": summary, "runs": results}
    report["curves"] = str(curves)
    print_json(report)
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
