"""Builds the demo models and prompts into a models volume, once, for compose and the
kustomize `cpu` overlay.

Why this file exists: the CPU deployments run a teacher and student jobs that need a
teacher model, students and prompts on a shared volume, and nothing may come from a model
hub (DESIGN.md §4). The trainer image carries this script; compose's `models` service and
the `cpu` overlay's init containers run it before a teacher or trainer starts. It builds
with `opd_client.train.demo_models` (keyed by a hash of that code, so a second run finds
the builds and returns at once; builds land by rename, so concurrent runs are safe),
writes the addition task's prompts, and points stable names at the builds:

    MODELS/teacher         the demo teacher (the teacher's --model)
    MODELS/student-same    a student with the teacher's tokenizer
    MODELS/student-cross   a student with its own tokenizer and chat template
    MODELS/prompts/train.jsonl, MODELS/prompts/heldout.jsonl

    python /opt/opd/prepare_models.py /models

What it does not know: the services that read the volume. A directory put at one of these
names by hand (a real teacher copied to MODELS/teacher for the GPU deployments, see the
README's deployment section) is kept and not built.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

TRAIN_PROMPTS = 5000
HELDOUT_PROMPTS = 200


def _link(target: Path, name: Path) -> None:
    """Points `name` at `target` (relative, so the volume can be mounted anywhere),
    replacing an older link atomically."""
    relative = os.path.relpath(target, name.parent)
    if name.is_symlink() and os.readlink(name) == relative:
        return
    staging = name.with_name(f".{name.name}.link")
    staging.unlink(missing_ok=True)
    staging.symlink_to(relative)
    staging.replace(name)


def _write_prompts(prompts: Path) -> None:
    from opd_client.train import task

    for split, count in (("train", TRAIN_PROMPTS), ("heldout", HELDOUT_PROMPTS)):
        path = prompts / f"{split}.jsonl"
        if not path.is_file():
            staging = task.write_jsonl(task.make_records(count, split, seed=0), f"{path}.tmp")
            staging.replace(path)


def prepare(models: Path) -> None:
    from opd_client.train.demo_models import ensure_demo_student, ensure_demo_teacher

    cache = models / "cache"
    for name, ensure in (
        ("teacher", lambda: ensure_demo_teacher(cache)),
        ("student-same", lambda: ensure_demo_student("same", cache)),
        ("student-cross", lambda: ensure_demo_student("cross", cache)),
    ):
        if (models / name).exists() and not (models / name).is_symlink():
            print(f"{models / name}: a directory put there by hand, kept", flush=True)
            continue
        built = ensure()
        _link(built, models / name)
        print(f"{models / name} -> {built.name}", flush=True)
    prompts = models / "prompts"
    prompts.mkdir(parents=True, exist_ok=True)
    _write_prompts(prompts)
    print(f"{prompts}: train.jsonl, heldout.jsonl", flush=True)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    prepare(Path(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
