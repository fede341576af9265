"""The paper's toy study of the interpolated OPD gradient estimator: variance against length.

    .venv/bin/python benchmarks/estimator_variance.py --quick        # < 1 minute
    .venv/bin/python benchmarks/estimator_variance.py --plot var.png # full run, < 5 minutes

Why this script exists: DESIGN.md §1 states that the estimator

    ĝ_γ = Σ_t (Σ_{t'≥t} γ^{t'−t} r_t') ∇log π(y_t|c_t),   r_t = log q(y_t|c_t) − log π(y_t|c_t)

spans token-level (γ = 0: biased, variance O(T²)) to sequence-level (γ = 1: unbiased for
−∇ KL(π‖q), variance O(T⁴)). Those are upper bounds; this measures what a small policy
actually shows. The policy is a tabular bigram model over V tokens (logits θ[prev, v], a
BOS row for the first step) and the teacher a fixed table q of the same shape, with random
logits for both. Two ways to pick the context row:

- "mixing": the previous token (a bigram chain), which forgets its past within a few
  steps, so rewards far apart are nearly independent;
- "persistent": the first token, a latent "mode" kept for the whole rollout (a student
  that has drifted into one regime), so every reward shares a mode-dependent mean — the
  long-range correlation under which the O(T²) bound for γ = 0 is reached.

For each T and γ, Monte-Carlo rollouts give per-rollout gradients ĝ_γ (the score of a
bigram is one-hot(y_t) − π(·|prev) in row prev, computed in closed form); the variance
is the trace of their covariance, with a standard error from 10 batches. The fitted
growth exponent is the least-squares slope of log variance on log T. The bias column is
‖E ĝ_γ − g*‖ / ‖g*‖ against the exact g* = −∇_θ KL(π‖q) (forward recursion over the
chain's marginals, autograd); for γ = 1 it checks the Monte-Carlo mean. Pure torch.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_json, print_table

GAMMAS = (0.0, 0.5, 0.9, 1.0)
PREDICTED = {0.0: 2.0, 1.0: 4.0}
POLICIES = ("mixing", "persistent")


def make_problem(policy: str, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Student logits θ [V+1, V] (row V: the first step) and teacher log-probs [V+1, V]."""
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(vocab + 1, vocab, generator=gen, dtype=torch.float64)
    teacher = torch.randn(vocab + 1, vocab, generator=gen, dtype=torch.float64)
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    return theta, torch.log_softmax(teacher, dim=-1)


def exact_gradient(policy: str, theta: torch.Tensor, logq: torch.Tensor, T: int) -> torch.Tensor:
    """g* = −∇_θ KL(π_θ‖q) over sequences of length T, exactly (flattened [(V+1)·V]): the
    sum over steps of the per-row KL weighted by the marginal of the context row."""
    vocab = theta.shape[1]
    th = theta.detach().clone().requires_grad_(True)
    logp = torch.log_softmax(th, dim=-1)
    kl_rows = (logp.exp() * (logp - logq)).sum(-1)  # [V+1]: per-step KL given prev
    marginal = torch.zeros(vocab + 1, dtype=theta.dtype)
    marginal[vocab] = 1.0  # the first step's context is BOS
    total = torch.zeros((), dtype=theta.dtype)
    for _ in range(T):
        total = total + (marginal * kl_rows).sum()
        if policy == "mixing" or marginal[vocab] > 0:  # persistent: the first token, then fixed
            nxt = marginal @ logp.exp()  # [V]
            marginal = torch.cat([nxt, torch.zeros(1, dtype=theta.dtype)])
    (grad,) = torch.autograd.grad(total, th)
    return -grad.flatten()


def per_rollout_gradients(
    policy: str, theta: torch.Tensor, logq: torch.Tensor, T: int, n: int, gen: torch.Generator
) -> dict[float, torch.Tensor]:
    """ĝ_γ for each γ in GAMMAS, one row per rollout: {γ: [N, (V+1)·V]}."""
    vocab = theta.shape[1]
    logp = torch.log_softmax(theta, dim=-1)
    probs = logp.exp()
    prev_NT = torch.empty(n, T, dtype=torch.long)
    y_NT = torch.empty(n, T, dtype=torch.long)
    prev_N = torch.full((n,), vocab, dtype=torch.long)
    for t in range(T):
        y_N = torch.multinomial(probs[prev_N], 1, generator=gen).squeeze(1)
        prev_NT[:, t], y_NT[:, t] = prev_N, y_N
        if policy == "mixing" or t == 0:
            prev_N = y_N
    r_NT = logq[prev_NT, y_NT] - logp[prev_NT, y_NT]
    score_NTV = torch.nn.functional.one_hot(y_NT, vocab).to(theta.dtype) - probs[prev_NT]
    rows_N = torch.arange(n)
    out = {}
    for gamma in GAMMAS:
        ret_NT = torch.empty_like(r_NT)
        acc_N = torch.zeros(n, dtype=theta.dtype)
        for t in reversed(range(T)):
            acc_N = r_NT[:, t] + gamma * acc_N
            ret_NT[:, t] = acc_N
        g_NCV = torch.zeros(n, vocab + 1, vocab, dtype=theta.dtype)
        for t in range(T):
            g_NCV[rows_N, prev_NT[:, t]] += ret_NT[:, t, None] * score_NTV[:, t]
        out[gamma] = g_NCV.flatten(1)
    return out


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y on log x."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    num = sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True))
    return num / sum((a - mx) ** 2 for a in lx)


def study(policy: str, lengths: list[int], n: int, vocab: int, seed: int) -> dict[str, Any]:
    theta, logq = make_problem(policy, vocab, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    rows = []
    for T in lengths:
        g_star = exact_gradient(policy, theta, logq, T)
        grads = per_rollout_gradients(policy, theta, logq, T, n, gen)
        for gamma, g_ND in grads.items():
            batches = [b.var(0).sum().item() for b in g_ND.chunk(10)]
            var = g_ND.var(0).sum().item()
            sem = torch.tensor(batches).std().item() / math.sqrt(len(batches))
            bias = ((g_ND.mean(0) - g_star).norm() / g_star.norm()).item()
            rows.append({"T": T, "gamma": gamma, "variance": var, "sem": sem, "bias": bias})
    fits = {}
    for gamma in GAMMAS:
        pts = [r for r in rows if r["gamma"] == gamma]
        fits[str(gamma)] = {
            "exponent": slope([r["T"] for r in pts], [r["variance"] for r in pts]),
            "exponent_last3": slope([r["T"] for r in pts[-3:]], [r["variance"] for r in pts[-3:]]),
            "predicted_bound": PREDICTED.get(gamma),
        }
    return {"policy": policy, "rows": rows, "fits": fits}


def plot(results: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: no plot written to {path}", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, res in zip(axes[0], results, strict=True):
        for gamma in GAMMAS:
            pts = [r for r in res["rows"] if r["gamma"] == gamma]
            k = res["fits"][str(gamma)]["exponent"]
            ax.loglog([r["T"] for r in pts], [r["variance"] for r in pts], "o-",
                      label=f"γ={gamma} (slope {k:.2f})")  # fmt: skip
        ax.set_title(f"{res['policy']} policy")
        ax.set_xlabel("T (tokens)")
        ax.set_ylabel("tr Cov[ĝ_γ]")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer rollouts (< 1 minute)")
    parser.add_argument("--rollouts", type=int, help="rollouts per T (default 4,000 / 40,000)")
    parser.add_argument("--lengths", default="4,8,16,32,64", help="comma-separated T values")
    parser.add_argument("--vocab", type=int, default=4, help="V, the policy's vocabulary")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path, help="write a log-log PNG (needs matplotlib)")
    args = parser.parse_args(argv)
    n = args.rollouts or (4000 if args.quick else 40000)
    lengths = [int(x) for x in args.lengths.split(",")]
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    began = time.perf_counter()
    results = [study(p, lengths, n, args.vocab, args.seed) for p in POLICIES]
    for res in results:
        print(f"\npolicy: {res['policy']}  (V={args.vocab}, {n} rollouts per T)")
        table = [
            [r["T"], r["gamma"], f"{r['variance']:.4g}", f"{r['sem']:.2g}", f"{r['bias']:.3f}"]
            for r in res["rows"]
        ]
        print_table(["T", "γ", "tr Cov", "± sem", "rel. bias"], table)
        fit_rows = [
            [g, f"{f['exponent']:.2f}", f"{f['exponent_last3']:.2f}", f["predicted_bound"] or "-"]
            for g, f in res["fits"].items()
        ]
        print()
        print_table(["γ", "exponent (all T)", "exponent (last 3 T)", "bound"], fit_rows)
    seconds = time.perf_counter() - began
    print()
    print_json({"rollouts": n, "vocab": args.vocab, "seconds": round(seconds, 1),
                "results": results})  # fmt: skip
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
