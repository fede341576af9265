"""Per-step metrics: one JSON object per line in `<run_dir>/metrics.jsonl`, and a bar.

Why this module exists: a user must see, every step, whether the student is learning and
how much teacher signal survives (loss, reverse KL on the support, student and teacher
mass, top-K overlap, gradient norm, the bridge's aligned fraction, mapped mass and masked
positions by reason, throughput and teacher latency). The file is append-only during a
run; on resume, lines past the checkpoint's step (work that is about to be redone) and a
torn last line are dropped first, atomically, so the file reads as one uninterrupted run.
Every record is also mirrored as TensorBoard scalars (`<run_dir>/tensorboard`, tags
`train/<key>` and `eval/<key>`, nested dicts as `train/<key>/<sub>`), opened with
`purge_step` at the resume step so TensorBoard drops the redone steps the same way.

What it does not know: how the numbers are computed; the loop hands it a dict.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, TextIO

from opd_client.train.checkpoint import write_atomic

METRICS_FILE = "metrics.jsonl"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


TENSORBOARD_DIR = "tensorboard"


def tensorboard_writer(run_dir: Path, purge_step: int) -> Any:
    """A SummaryWriter on `<run_dir>/tensorboard` that discards earlier events at or past
    `purge_step` (the step a resumed run starts from)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR), purge_step=purge_step)


def scalars(record: dict[str, Any], prefix: str) -> dict[str, float]:
    """The record's finite numbers as `prefix/key` (nested: `prefix/key/sub`), no step."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key == "step" or isinstance(value, bool):
            continue
        if isinstance(value, dict):
            out.update(scalars(value, f"{prefix}/{key}"))
        elif isinstance(value, int | float) and math.isfinite(value):
            out[f"{prefix}/{key}"] = float(value)
    return out


class MetricsWriter:
    """`with MetricsWriter(run_dir) as m: m.write({...})` appends one line, flushed.
    `name` picks the file (`eval.jsonl` holds the evaluations); with a `tensorboard`
    SummaryWriter each record also becomes scalars tagged `tag/<key>` at its step."""

    def __init__(
        self,
        run_dir: Path,
        name: str = METRICS_FILE,
        tensorboard: Any = None,
        tag: str = "train",
    ) -> None:
        self.path = Path(run_dir) / name
        self._handle: TextIO | None = None
        self._tensorboard = tensorboard
        self._tag = tag

    def __enter__(self) -> MetricsWriter:
        self._handle = self.path.open("a", encoding="utf-8")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def write(self, record: dict[str, Any]) -> None:
        if self._handle is None:
            raise RuntimeError("MetricsWriter used outside 'with'")
        self._handle.write(json.dumps(_clean(record), sort_keys=True) + "\n")
        self._handle.flush()
        if self._tensorboard is not None:
            self.mirror(record)

    def mirror(self, record: dict[str, Any]) -> None:
        """Writes the record to TensorBoard only (an eval kept from before a resume)."""
        if self._tensorboard is None:
            return
        for tag, value in scalars(record, self._tag).items():
            self._tensorboard.add_scalar(tag, value, global_step=int(record["step"]))
        self._tensorboard.flush()


def read_metrics(run_dir: Path, name: str = METRICS_FILE) -> list[dict[str, Any]]:
    """Complete lines of the metrics file `name` (a torn last line is skipped)."""
    path = Path(run_dir) / name
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def truncate_metrics(run_dir: Path, last_step: int, name: str = METRICS_FILE) -> None:
    """Keeps the records with step < last_step (steps are 0-based; `last_step` of them
    are done), rewriting the file atomically."""
    path = Path(run_dir) / name
    if not path.is_file():
        return
    kept = [r for r in read_metrics(run_dir, name) if int(r.get("step", -1)) < last_step]
    write_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))


def progress_bar(total: int, initial: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="opd-train", unit="step")
