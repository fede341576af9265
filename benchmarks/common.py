"""Helpers the benchmark scripts share: process memory, limits and output.

Why this module exists: every benchmark reports the same two things (wall time and the
process's memory high-water mark) and prints a table plus one JSON object, so the way
they are measured and printed is written once. It imports nothing beyond the standard
library, so it also runs in the separate benchmark environment (`.venv-bench`).
"""

from __future__ import annotations

import json
import resource
import sys
from collections.abc import Sequence
from typing import Any

GIB = 1024**3
MB = 1e6


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_bytes() -> int:
    """Resident memory of this process now."""
    return _status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """Resident high-water mark of this process (since start or the last reset)."""
    return _status_kib("VmHWM") * 1024


def reset_peak_rss() -> None:
    """Lower the high-water mark to the current RSS (Linux ≥ 4.0, `clear_refs` value 5)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def limit_extra_memory(extra_bytes: int) -> None:
    """Cap this process's address space at its current size plus `extra_bytes`, so a path
    that would overrun fails alone (MemoryError / RuntimeError) instead of the machine."""
    soft = _status_kib("VmSize") * 1024 + extra_bytes
    resource.setrlimit(resource.RLIMIT_AS, (soft, resource.RLIM_INFINITY))


def mem_available_bytes() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/meminfo has no MemAvailable")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], file: Any = None) -> None:
    """A plain fixed-width table, one row per line."""
    out = file or sys.stdout
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print(
            "  ".join(c.rjust(w) if n else c.ljust(w) for c, w in zip(row, widths, strict=True)),
            file=out,
        )
        if n == 0:
            print("  ".join("-" * w for w in widths), file=out)


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))
