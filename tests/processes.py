"""Starting and stopping real teacher and gateway processes for every test layer.

The gateway, trainer and end-to-end tests (and benchmarks/gateway.py) run the teacher as
`opd-teacher serve` on the tiny model and, where a real HTTP server is needed, the
gateway as `opd-gateway` (uvicorn), each on a free loopback port; the helpers live here
so that every folder starts and waits for them the same way.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _popen(
    command: list[str], log: Path | None, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """Starts `command` with stdout and stderr appended to the file `log` (so a process
    started again keeps its predecessor's lines), or, without `log`, stdout dropped and
    stderr piped."""
    if log is None:
        return subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
        )
    with log.open("a", encoding="utf-8") as handle:
        return subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, text=True, env=env
        )


def _early_exit(name: str, process: subprocess.Popen[str], log: Path | None) -> RuntimeError:
    if log is None:
        return RuntimeError(f"{name} exited early: {process.stderr.read()}")  # type: ignore[union-attr]
    return RuntimeError(f"{name} exited early (log {log}): {log.read_text()[-4000:]}")


def start_teacher(
    model_dir: Path,
    port: int,
    *extra: str,
    timeout_s: float = 120,
    env: dict[str, str] | None = None,
    python: str | Path = sys.executable,
    backend: str = "hf",
    statuses: list[int] | None = None,
    log: Path | None = None,
) -> subprocess.Popen[str]:
    """`opd-teacher serve` on `model_dir`, returned once its readiness is SERVING.

    `extra` flags come last, so they override the defaults given here. `python` is the
    interpreter that serves (the vllm backend runs in `.venv-vllm`); `statuses`, when
    given, collects every readiness status seen while waiting; `log`, when given, is the
    file that gets the process's stdout and stderr (else stderr is a pipe)."""
    process = _popen(
        [
            str(python),
            "-m",
            "opd_teacher.cli",
            "serve",
            "--backend",
            backend,
            "--model",
            str(model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-wait-ms",
            "1",
            "--log-level",
            "warning",
            *extra,
        ],
        log,
        env,
    )
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise _early_exit("teacher", process, log)
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if statuses is not None:
                    statuses.append(reply.status)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return process
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    stop(process)
    raise TimeoutError(f"teacher on port {port} not SERVING after {timeout_s} s")


def start_gateway(
    port: int, *args: str, timeout_s: float = 60, log: Path | None = None
) -> subprocess.Popen[str]:
    """`opd-gateway --port PORT ARGS...`, returned once /healthz answers; `log` as for
    `start_teacher`."""
    process = _popen(
        [
            sys.executable,
            "-m",
            "opd_gateway.cli",
            "--port",
            str(port),
            "--log-level",
            "warning",
            *args,
        ],
        log,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise _early_exit("gateway", process, log)
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop(process)
    raise TimeoutError(f"gateway on port {port} not answering after {timeout_s} s")


def start_trainer(
    config: Path, log: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """`opd-train run CONFIG EXTRA...`, its output appended to `log` (a restarted job keeps
    its predecessor's lines)."""
    command = [sys.executable, "-m", "opd_client.train.cli", "run", str(config), *extra]
    return _popen(command, log, env)


def wait_until(
    ready: Callable[[], T], process: subprocess.Popen[str], log: Path, timeout_s: float = 120
) -> T:
    """Polls `ready()` every 50 ms until it is truthy and returns its value; fails with the
    tail of `log` if `process` exits first or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while not (value := ready()):
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode}: {log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"not ready after {timeout_s} s: {log.read_text()[-3000:]}")
        time.sleep(0.05)
    return value


def stop(process: subprocess.Popen[str], timeout_s: float = 15) -> int:
    """SIGTERM, then SIGKILL if it has not exited within `timeout_s`; returns the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)
