"""`make demo`: start the teacher service on the tiny model and show what it thinks of a text.

It builds the tiny model (cached), starts `opd-teacher serve` as a child process on a
free loopback port, waits for gRPC readiness, prints the `opd-teacher score` table for a
text, and stops the server with SIGTERM (so the drain is shown too).

    python -m opd_teacher.demo [--text "12+7=19."]
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys

from opd_client import SyncTeacherClient
from opd_teacher.cli import main as cli_main
from opd_teacher.tiny import ensure_tiny_teacher


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", default="<think>12+7</think> 12+7=19.", help="text to score")
    args = parser.parse_args(argv)
    model_dir = ensure_tiny_teacher()
    port = free_port()
    address = f"127.0.0.1:{port}"
    print(f"starting the teacher on {address} with {model_dir.name}", flush=True)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "opd_teacher.cli",
            "serve",
            "--model",
            str(model_dir),
            "--port",
            str(port),
        ]
    )
    try:
        with SyncTeacherClient(address, timeout_s=10) as teacher:
            teacher.wait_ready(timeout_s=120)
            info = teacher.get_info()
        print(
            f"ready: {info.model} ({info.backend} {info.backend_version}), vocab "
            f"{info.vocab_size}, max top-k {info.max_top_k}",
            flush=True,
        )
        code = cli_main(["score", "--teacher", address, "--text", args.text, "--top-k", "5"])
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    print(f"teacher stopped with exit code {server.returncode}")
    return code or server.returncode


if __name__ == "__main__":
    sys.exit(main())
