"""docker-compose.yml, validated without a Docker engine: Compose v2's own `config` for
every profile, the compose-spec JSON schema, and the topology the file promises (the
gateway and trainers wait for whichever teacher is healthy, each trainer has its own
checkpoint volume and config, the token is a secret, ports are published only where a
user needs them, the GPU teacher reserves GPUs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from deploy_tools import (
    COMPOSE_FILE,
    PROFILES,
    REPO_ROOT,
    compose_argv,
    compose_config,
    compose_env,
    run,
    venv_tool,
)

TEACHERS = {"cpu": "teacher-cpu", "gpu": "teacher-gpu"}
TRAINERS = ("trainer-a", "trainer-b")


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    home = tmp_path_factory.mktemp("compose-home")
    return {profile: compose_config(profile, home) for profile in PROFILES}


@pytest.mark.parametrize("profiles", [(), ("cpu",), ("gpu",), ("cpu", "gpu")])
def test_compose_config_is_valid(profiles: tuple[str, ...], tmp_path: Path) -> None:
    run([*compose_argv(*profiles), "config", "-q"], compose_env(tmp_path))


def test_compose_file_matches_the_compose_spec_schema() -> None:
    checker = venv_tool("check-jsonschema")
    run([checker, "--builtin-schema", "vendor.compose-spec", COMPOSE_FILE])


@pytest.mark.parametrize("profile", PROFILES)
def test_each_profile_runs_one_teacher_behind_the_alias(
    profile: str, resolved: dict[str, dict[str, Any]]
) -> None:
    services = resolved[profile]["services"]
    teachers = [name for name in services if name.startswith("teacher-")]
    assert teachers == [TEACHERS[profile]]
    aliases = services[TEACHERS[profile]]["networks"]["default"]["aliases"]
    assert "teacher" in aliases
    assert {"models", "gateway", *TRAINERS} <= set(services)


@pytest.mark.parametrize("profile", PROFILES)
def test_gateway_and_trainers_wait_for_whichever_teacher_is_healthy(
    profile: str, resolved: dict[str, dict[str, Any]]
) -> None:
    services = resolved[profile]["services"]
    for name in ("gateway", *TRAINERS):
        depends = services[name]["depends_on"]
        for teacher in TEACHERS.values():
            assert depends[teacher]["condition"] == "service_healthy", name
            assert depends[teacher]["required"] is False, name
    for name in (TEACHERS[profile], *TRAINERS):
        models = services[name]["depends_on"]["models"]
        assert models["condition"] == "service_completed_successfully", name


def test_trainers_have_their_own_config_and_checkpoint_volume(
    resolved: dict[str, dict[str, Any]],
) -> None:
    services = resolved["cpu"]["services"]
    checkpoint_volumes, configs = [], []
    for name in TRAINERS:
        mounts = {v["target"]: v for v in services[name]["volumes"]}
        assert mounts["/checkpoints"]["type"] == "volume"
        assert mounts["/models"].get("read_only") is True
        checkpoint_volumes.append(mounts["/checkpoints"]["source"])
        configs.append(services[name]["configs"][0]["source"])
        assert services[name]["restart"].startswith("on-failure")
    assert len(set(checkpoint_volumes)) == len(TRAINERS)
    assert len(set(configs)) == len(TRAINERS)
    declared = resolved["cpu"]["volumes"]
    assert {"models", "runs", *checkpoint_volumes} <= set(declared)


@pytest.mark.parametrize("profile", PROFILES)
def test_token_is_a_secret_of_every_teacher_client(
    profile: str, resolved: dict[str, dict[str, Any]]
) -> None:
    model = resolved[profile]
    assert model["secrets"]["opd_token"]["environment"] == "OPD_AUTH_TOKEN"
    for name in (TEACHERS[profile], "gateway", *TRAINERS):
        sources = [s["source"] for s in model["services"][name]["secrets"]]
        assert sources == ["opd_token"], name


@pytest.mark.parametrize("profile", PROFILES)
def test_ports_are_published_only_where_a_user_needs_them(
    profile: str, resolved: dict[str, dict[str, Any]]
) -> None:
    services = resolved[profile]["services"]
    published = {name: s.get("ports", []) for name, s in services.items() if s.get("ports")}
    assert set(published) == {"gateway", TEACHERS[profile]}
    assert [p["target"] for p in published["gateway"]] == [8000]
    # The teacher only on loopback, for students run on the host; metrics stay inside.
    assert [(p["host_ip"], p["target"]) for p in published[TEACHERS[profile]]] == [
        ("127.0.0.1", 50051)
    ]


def test_gpu_teacher_reserves_gpus(resolved: dict[str, dict[str, Any]]) -> None:
    teacher = resolved["gpu"]["services"]["teacher-gpu"]
    (device,) = teacher["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    assert device["driver"] == "nvidia"
    assert "deploy" not in resolved["cpu"]["services"]["teacher-cpu"]


def test_compose_files_name_no_path_of_this_machine() -> None:
    for path in (COMPOSE_FILE, *sorted((REPO_ROOT / "deploy").rglob("*"))):
        if path.is_file():
            assert str(REPO_ROOT) not in path.read_text(), path
