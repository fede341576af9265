"""Fixtures of the gateway's API tests: a real teacher process on the tiny model (one per
session), a direct SDK client to it for reference answers, and the gateway app built by
`create_app` and driven in-process by FastAPI's TestClient."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from processes import free_port, start_teacher, stop

from opd_client import SyncTeacherClient
from opd_gateway.app import create_app
from opd_gateway.settings import GatewaySettings

MakeGateway = Callable[..., TestClient]


@pytest.fixture(scope="session")
def teacher_address(tiny_teacher_dir: Path) -> Iterator[str]:
    port = free_port()
    process = start_teacher(tiny_teacher_dir, port)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop(process)


@pytest.fixture(scope="session")
def direct(teacher_address: str) -> Iterator[SyncTeacherClient]:
    """The teacher through the SDK: what the gateway's answers must equal."""
    with SyncTeacherClient(teacher_address, timeout_s=30) as client:
        yield client


@pytest.fixture
def make_gateway(teacher_address: str) -> Iterator[MakeGateway]:
    """make_gateway(**GatewaySettings fields) -> a started TestClient (closed after the test)."""
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        overrides.setdefault("teacher", teacher_address)
        overrides.setdefault("retry_attempts", 1)
        overrides.setdefault("timeout_s", 20)
        client = TestClient(create_app(GatewaySettings(**overrides)), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def api(make_gateway: MakeGateway) -> TestClient:
    return make_gateway()
