"""Training curves as PNG: one figure of panels, several runs overlaid.

Why this module exists: a user compares runs by their curves (is LSM's loss falling, did
held-out accuracy rise, how much support mass does the student cover, how much teacher
signal survived the bridge), and `opd-train plot RUN_DIR…` draws them from the runs'
`metrics.jsonl` and `eval.jsonl` with matplotlib, headless (the Agg backend), with no
server or notebook. Panels whose metric no run recorded are left out.

What it does not know: how the numbers were made; it reads the two JSONL files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opd_client.train.evaluate import EVAL_FILE
from opd_client.train.metrics import read_metrics

# (file, key, title): the panels, in reading order.
PANELS: tuple[tuple[str, str, str], ...] = (
    ("eval", "eval_accuracy", "held-out accuracy"),
    ("metrics", "loss", "loss"),
    ("metrics", "rkl_support", "reverse KL on the support"),
    ("metrics", "student_mass", "student mass on teacher top-K"),
    ("metrics", "overlap_ratio", "top-K overlap"),
    ("metrics", "grad_norm", "gradient norm"),
    ("metrics", "aligned_fraction", "aligned fraction"),
    ("metrics", "rollout_len_mean", "rollout length (tokens)"),
)


def _series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for row in rows:
        value = row.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            xs.append(int(row["step"]))
            ys.append(float(value))
    return xs, ys


def plot_runs(run_dirs: Sequence[Path], out: Path, labels: Sequence[str] | None = None) -> Path:
    """Writes one PNG with a panel per recorded metric, a line per run; returns `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not run_dirs:
        raise ValueError("no run directories given")
    names = list(labels) if labels else [Path(d).name for d in run_dirs]
    if len(names) != len(run_dirs):
        raise ValueError(f"{len(names)} labels for {len(run_dirs)} runs")
    data = []
    for d in run_dirs:
        rows = {"metrics": read_metrics(Path(d)), "eval": read_metrics(Path(d), EVAL_FILE)}
        if not rows["metrics"] and not rows["eval"]:
            raise ValueError(f"{d}: no metrics.jsonl or eval.jsonl with records")
        data.append(rows)
    panels = [p for p in PANELS if any(_series(rows[p[0]], p[1])[0] for rows in data)]
    cols = 2 if len(panels) > 1 else 1
    rows_n = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(6 * cols, 3.2 * rows_n), squeeze=False)
    for ax, (source, key, title) in zip(axes.flat, panels, strict=False):
        for name, rows in zip(names, data, strict=True):
            xs, ys = _series(rows[source], key)
            if xs:
                ax.plot(xs, ys, marker="o" if source == "eval" else None, ms=3, label=name)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
