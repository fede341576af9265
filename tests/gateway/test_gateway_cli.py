"""`opd-gateway` as a process: it imports no torch, starts with its teacher down (liveness
200, readiness and /v1/* 503 with a readable message), answers an oversized declared
body with 413 without reading it, rejects a bad flag in one line, and exits 0 on SIGTERM."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import httpx
from processes import free_port, start_gateway, stop

NO_TORCH_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from fastapi.testclient import TestClient
    import opd_gateway.cli
    from opd_gateway.app import create_app
    from opd_gateway.settings import GatewaySettings

    app = create_app(GatewaySettings(teacher=sys.argv[1], retry_attempts=1))
    with TestClient(app) as client:
        response = client.post("/v1/support", json={"text": "12+7=19.", "top_k": 3})
        assert response.status_code == 200, response.text
        assert client.get("/v1/info").status_code == 200
    heavy = [name for name in ("torch", "transformers") if name in sys.modules]
    print(json.dumps({"heavy": heavy}))
    """
)


def test_gateway_serves_without_importing_torch(teacher_address: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH_SCRIPT, teacher_address],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"heavy": []}


def _raw_request(port: int, head: bytes) -> bytes:
    """Sends only the request head (no body) and returns what the server answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and b"}" in chunk:
                break
        return b"".join(chunks)


def test_starts_with_teacher_down_and_keeps_serving() -> None:
    port, dead = free_port(), free_port()
    process = start_gateway(port, "--teacher", f"127.0.0.1:{dead}", "--max-body-bytes", "2048")
    base = f"http://127.0.0.1:{port}"
    try:
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
        assert httpx.get(f"{base}/readyz").status_code == 503
        down = httpx.post(f"{base}/v1/support", json={"text": "1 2 3", "top_k": 2}, timeout=30)
        assert down.status_code == 503
        assert (
            "unavailable" in down.json()["detail"] and f"127.0.0.1:{dead}" in down.json()["detail"]
        )
        # 1 GB declared, nothing sent: the answer comes from the header alone.
        answer = _raw_request(
            port,
            b"POST /v1/support HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000000\r\n\r\n",
        )
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"max_body_bytes 2048" in answer
        assert httpx.get(f"{base}/healthz").status_code == 200
        page = httpx.get(f"{base}/")
        assert page.status_code == 200 and "<textarea" in page.text
    finally:
        assert stop(process) == 0


def test_bad_flag_is_one_line_and_exit_code_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "opd_gateway.cli", "--port", "70000"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "port" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_help_lists_every_flag() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "opd_gateway.cli", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    for flag in (
        "--teacher",
        "--host",
        "--port",
        "--auth-token-file",
        "--max-body-bytes",
        "--max-text-chars",
        "--max-concurrency-per-client",
        "--timeout-s",
        "--log-level",
    ):
        assert flag in result.stdout
