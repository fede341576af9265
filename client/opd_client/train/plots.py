"""Training curves as PNG: one figure of panels, several runs overlaid.

Why this module exists: a user compares runs by their curves (is LSM's loss falling, did
held-out accuracy rise, how much support mass does the student cover, how much teacher
signal survived the bridge), and `opd-train plot RUN_DIR…` draws them from the runs'
`metrics.jsonl` and `eval.jsonl` with matplotlib, headless (the Agg backend), with no
server or notebook. Panels whose metric no run recorded are left out. A run with several
tasks or several teachers also gets per-task held-out accuracy (`eval_accuracy_by_task`)
and per-teacher loss and student mass (`teachers.<name>`), one line per task or teacher
per run: colour is the run, line style the task or teacher (with one run, colour is the
task or teacher too).

What it does not know: how the numbers were made; it reads the two JSONL files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeGuard

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
# (file, group key, metric inside each member or "" for the member's own number, title):
# panels with a line per task or teacher, drawn after the first panel of PANELS when some
# run has at least two members in the group.
GROUP_PANELS: tuple[tuple[str, str, str, str], ...] = (
    ("eval", "eval_accuracy_by_task", "", "held-out accuracy by task"),
    ("metrics", "teachers", "loss", "loss by teacher"),
    ("metrics", "teachers", "student_mass", "student mass on teacher top-K, by teacher"),
)
_STYLES = ("-", "--", ":", "-.")

Series = tuple[list[int], list[float]]


def _finite(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _series(rows: Sequence[dict[str, Any]], key: str) -> Series:
    xs, ys = [], []
    for row in rows:
        value = row.get(key)
        if _finite(value):
            xs.append(int(row["step"]))
            ys.append(float(value))
    return xs, ys


def grouped_series(
    rows: Sequence[dict[str, Any]], group: str, metric: str = ""
) -> dict[str, Series]:
    """member -> (steps, values) of `row[group][member]` (or `row[group][member][metric]`),
    e.g. ("eval_accuracy_by_task") -> {"addition": ..., "sorting": ...} or ("teachers",
    "loss") -> {"math": ..., "sorter": ...}; members with no finite value are left out."""
    out: dict[str, Series] = {}
    for row in rows:
        members = row.get(group)
        if not isinstance(members, dict):
            continue
        for name, entry in members.items():
            value = entry.get(metric) if metric and isinstance(entry, dict) else entry
            if _finite(value):
                xs, ys = out.setdefault(str(name), ([], []))
                xs.append(int(row["step"]))
                ys.append(float(value))
    return out


def _draw_group(
    ax: Any, names: Sequence[str], data: Sequence[dict[str, list[dict[str, Any]]]], panel: Any
) -> None:
    source, group, metric, _ = panel
    per_run = [grouped_series(rows[source], group, metric) for rows in data]
    members = sorted({m for series in per_run for m in series})
    for run, (name, series) in enumerate(zip(names, per_run, strict=True)):
        for index, member in enumerate(members):
            if member not in series:
                continue
            xs, ys = series[member]
            one_run = len(names) == 1
            ax.plot(
                xs,
                ys,
                color=f"C{index if one_run else run}",
                linestyle=_STYLES[index % len(_STYLES)],
                marker="o" if source == "eval" else None,
                ms=3,
                label=member if one_run else f"{name} · {member}",
            )
    ax.legend(fontsize=7)


def plot_runs(run_dirs: Sequence[Path], out: Path, labels: Sequence[str] | None = None) -> Path:
    """Writes one PNG with a panel per recorded metric, a line per run (per task or teacher
    and run in the group panels); returns `out`."""
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
    panels: list[tuple[Any, ...]] = [
        (False, *p) for p in PANELS if any(_series(rows[p[0]], p[1])[0] for rows in data)
    ]
    groups = [
        (True, *p)
        for p in GROUP_PANELS
        if any(len(grouped_series(rows[p[0]], p[1], p[2])) >= 2 for rows in data)
    ]
    panels[1:1] = groups
    cols = 2 if len(panels) > 1 else 1
    rows_n = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(6 * cols, 3.2 * rows_n), squeeze=False)
    for ax, (grouped, *panel) in zip(axes.flat, panels, strict=False):
        if grouped:
            _draw_group(ax, names, data, panel)
        else:
            source, key, _ = panel
            for run, (name, rows) in enumerate(zip(names, data, strict=True)):
                xs, ys = _series(rows[source], key)
                if xs:
                    marker = "o" if source == "eval" else None
                    ax.plot(xs, ys, color=f"C{run}", marker=marker, ms=3, label=name)
        ax.set_title(panel[-1])
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    if panels and not panels[0][0]:
        axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
