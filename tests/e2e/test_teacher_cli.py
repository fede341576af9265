"""`opd-teacher` as a user runs it: a real server process on the tiny model, the score
command, clear CLI errors, and SIGTERM draining to exit code 0."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from processes import free_port, start_teacher

pytestmark = pytest.mark.slow


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "opd_teacher.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def served_tiny(tiny_teacher_dir: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    process = start_teacher(tiny_teacher_dir, port, "--log-level", "info", "--log-format", "json")
    try:
        yield f"127.0.0.1:{port}", process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_score_json_and_table(served_tiny: tuple[str, subprocess.Popen[str]]) -> None:
    address, _ = served_tiny
    result = _cli("score", "--teacher", address, "--text", "12+7=19.", "--top-k", "3", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["positions"]) == len(report["token_ids"])
    first = report["positions"][0]
    assert len(first["top"]) == 3 and first["next_rank"] >= 1
    assert "".join(p["token"] for p in report["positions"]) == "12+7=19."
    table = _cli("score", "--teacher", address, "--ids", "5", "9", "12", "--top-k", "2")
    assert table.returncode == 0, table.stderr
    assert "teacher's top-2" in table.stdout


def test_bad_input_is_one_line_without_traceback(
    served_tiny: tuple[str, subprocess.Popen[str]],
) -> None:
    address, process = served_tiny
    result = _cli("score", "--teacher", address, "--ids", "5", "99999", "--top-k", "2")
    assert result.returncode == 2
    assert "INVALID_ARGUMENT" in result.stderr and "vocab_size 512" in result.stderr
    assert "Traceback" not in result.stderr
    assert process.poll() is None, "the server keeps serving"


def test_serve_rejects_a_missing_model_directory(tmp_path: Path) -> None:
    result = _cli("serve", "--model", str(tmp_path / "absent"), "--port", "0")
    assert result.returncode == 2
    assert "model_dir" in result.stderr and "Traceback" not in result.stderr


def test_help_explains_every_serve_flag() -> None:
    result = _cli("serve", "--help")
    assert result.returncode == 0
    for flag in (
        "--model",
        "--backend",
        "--max-top-k",
        "--max-batch-tokens",
        "--max-wait-ms",
        "--max-queue",
        "--metrics-port",
        "--auth-token-file",
        "--log-format",
    ):
        assert flag in result.stdout


def test_sigterm_drains_and_exits_zero(served_tiny: tuple[str, subprocess.Popen[str]]) -> None:
    _, process = served_tiny
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    logs = [json.loads(line) for line in process.stderr.read().splitlines() if line.startswith("{")]  # type: ignore[union-attr]
    messages = [entry["message"] for entry in logs]
    order = [
        "received SIGTERM",
        "drain: readiness NOT_SERVING",
        "stop: closing the gRPC server",
        "stop: shutting the engine down",
        "stopped",
    ]
    positions = [next(i for i, m in enumerate(messages) if m.startswith(step)) for step in order]
    assert positions == sorted(positions), messages
