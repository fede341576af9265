"""The project cache: where locally built models and tokenizers live, and how one is
built exactly once.

Tiny test models, demo models and converted tokenizers are built on the machine (never
downloaded from a hub) and kept under `OPD_CACHE_DIR` (default `.cache/opd` in the
working directory). A build goes into a staging directory that is renamed into place
only when complete, so a killed build never leaves a half-written model that later
runs would take for a finished one. This module knows directories, not models.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("OPD_CACHE_DIR", Path.cwd() / ".cache" / "opd"))


def build_once(target: Path, build: Callable[[Path], object], done_marker: str) -> Path:
    """Returns `target`, first running `build(staging_dir)` unless `target/done_marker`
    exists; the staging directory is renamed to `target` when `build` returns."""
    if (target / done_marker).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        build(staging)
        with contextlib.suppress(OSError):  # another process finished first: keep its copy
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
