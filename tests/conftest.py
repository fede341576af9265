"""Shared pytest set-up for every test layer.

A skipped test tests nothing, so a run with a skip outside `SKIP_ALLOWLIST` fails
(DEVELOPERS.md): a missing dependency must break `make test`, not hide behind a skip.
Models and tokenizers are built into the project cache (`.cache/opd`, or OPD_CACHE_DIR).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("OPD_CACHE_DIR", str(REPO_ROOT / ".cache" / "opd"))

# Each entry: a substring of the skipped test's node id, and why skipping it is fine.
SKIP_ALLOWLIST: dict[str, str] = {}


def _allowed(nodeid: str) -> bool:
    return any(pattern in nodeid for pattern in SKIP_ALLOWLIST)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    skipped = [r.nodeid for r in reporter.stats.get("skipped", []) if not _allowed(r.nodeid)]
    if skipped:
        reporter.write_line(
            f"FAILED: {len(skipped)} skipped test(s) outside tests/conftest.py SKIP_ALLOWLIST:",
            red=True,
        )
        for nodeid in skipped:
            reporter.write_line(f"  {nodeid}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def tiny_teacher_dir() -> Path:
    from opd_teacher.tiny import ensure_tiny_teacher

    return ensure_tiny_teacher()
