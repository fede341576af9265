"""The two scripts the images carry, run for real on loopback: healthcheck.py (Docker's
HEALTHCHECK and compose's `service_healthy`) against a grpc.health.v1 server and an HTTP
server, and prepare_models.py (the models volume's stable names and prompts) with the
demo-model builders replaced by stubs, so no model is trained here."""

from __future__ import annotations

import http.server
import importlib.util
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from deploy_tools import DOCKER_DIR
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from opd_protos.names import LIVENESS_SERVICE, SERVICE_NAME

HEALTHCHECK = DOCKER_DIR / "healthcheck.py"


def _healthcheck(*args: str) -> int:
    result = subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args], capture_output=True, timeout=30, check=False
    )
    return result.returncode


@pytest.fixture
def loading_teacher() -> Iterator[str]:
    """A gRPC server whose health looks like a teacher that is still loading its model."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def test_grpc_healthcheck_follows_readiness_and_liveness(loading_teacher: str) -> None:
    assert _healthcheck("grpc", loading_teacher, LIVENESS_SERVICE) == 0
    assert _healthcheck("grpc", loading_teacher, SERVICE_NAME) == 1
    assert _healthcheck("grpc", loading_teacher, "no.such.Service") == 1


def test_grpc_healthcheck_fails_when_nothing_listens(free_port: int) -> None:
    assert _healthcheck("grpc", f"127.0.0.1:{free_port}", LIVENESS_SERVICE) == 1


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        del format, args


def test_http_healthcheck_needs_a_2xx(free_port: int) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert _healthcheck("http", f"http://127.0.0.1:{free_port}/healthz") == 0
        assert _healthcheck("http", f"http://127.0.0.1:{free_port}/readyz") == 1
    finally:
        server.shutdown()
        server.server_close()
    assert _healthcheck("http", f"http://127.0.0.1:{free_port}/healthz") == 1


def test_healthcheck_usage_error() -> None:
    assert _healthcheck("grpc", "127.0.0.1:1") == 2


def _prepare_models() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "prepare_models", DOCKER_DIR / "prepare_models.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prepare_models_links_stable_names_and_writes_prompts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opd_client.train import demo_models

    builds: list[str] = []

    def build(name: str, root: Path) -> Path:
        built = root / f"{name}-0123abcd"
        built.mkdir(parents=True, exist_ok=True)
        builds.append(name)
        return built

    monkeypatch.setattr(
        demo_models, "ensure_demo_teacher", lambda root: build("demo-teacher", root)
    )
    monkeypatch.setattr(
        demo_models, "ensure_demo_student", lambda kind, root: build(f"demo-student-{kind}", root)
    )
    module = _prepare_models()
    models = tmp_path / "models"
    models.mkdir()
    assert module.main([str(models)]) == 0
    assert module.main([str(models)]) == 0  # a second run changes nothing
    for name, target in (
        ("teacher", "cache/demo-teacher-0123abcd"),
        ("student-same", "cache/demo-student-same-0123abcd"),
        ("student-cross", "cache/demo-student-cross-0123abcd"),
    ):
        link = models / name
        assert link.is_symlink() and str(link.readlink()) == target  # relative: any mount
        assert link.resolve() == (models / target).resolve()
    train = (models / "prompts/train.jsonl").read_text().splitlines()
    heldout = (models / "prompts/heldout.jsonl").read_text().splitlines()
    assert (len(train), len(heldout)) == (module.TRAIN_PROMPTS, module.HELDOUT_PROMPTS)
    assert {"messages", "answer"} <= json.loads(train[0]).keys()
    assert not set(train) & set(heldout)

    # A teacher copied in by hand (the GPU deployments) is kept and never built.
    builds.clear()
    (models / "teacher").unlink()
    (models / "teacher").mkdir()
    assert module.main([str(models)]) == 0
    assert (models / "teacher").is_dir() and not (models / "teacher").is_symlink()
    assert "demo-teacher" not in builds
