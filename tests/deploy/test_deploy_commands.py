"""Every command line of the images, the compose file and the Kubernetes manifests, fed
to the real CLI parsers (`opd-teacher`, `opd-gateway`, `opd-train`) and validated configs,
then checked against each other and the server's constants: the ports clients dial, the
ports health checks and probes ask, the health service names, the token paths and the
grace periods. A flag renamed in a CLI, or a port changed on one side only, fails here.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from deploy_tools import (
    DOCKER_DIR,
    OVERLAYS,
    PROFILES,
    REPO_ROOT,
    compose_config,
    containers,
    dockerfiles,
    find,
    kustomize,
    read_dockerfile,
)

from opd_client.train.cli import build_parser as train_parser
from opd_client.train.config import TrainConfig
from opd_client.train.config_load import load_config
from opd_gateway.cli import build_parser as gateway_parser
from opd_gateway.settings import GatewaySettings
from opd_protos.names import LIVENESS_SERVICE, SERVICE_NAME
from opd_teacher.cli import build_parser as teacher_parser
from opd_teacher.cli import server_config
from opd_teacher.config import ServerConfig

TEACHER_PORT = ServerConfig().port
HEALTH_NAMES = {"", SERVICE_NAME, LIVENESS_SERVICE}
SCRIPTS = {"/opt/opd/healthcheck.py", "/opt/opd/prepare_models.py"}


@dataclass
class CommandLine:
    """One command a container runs, where it comes from, and how to read its files."""

    origin: str
    argv: list[str]
    files: dict[str, Path] = field(default_factory=dict)
    """Container path -> file in the repository (configs mounted into the container)."""


def _parse(parser: argparse.ArgumentParser, line: CommandLine) -> argparse.Namespace:
    try:
        return parser.parse_args(line.argv[1:])
    except SystemExit:
        pytest.fail(f"{line.origin}: {shlex.join(line.argv)} is refused by {parser.prog}")


@dataclass
class Parsed:
    teacher: list[tuple[CommandLine, argparse.Namespace]] = field(default_factory=list)
    gateway: list[tuple[CommandLine, GatewaySettings]] = field(default_factory=list)
    trainer: list[tuple[CommandLine, TrainConfig]] = field(default_factory=list)
    health: list[tuple[CommandLine, list[str]]] = field(default_factory=list)


def check_and_parse(lines: list[CommandLine], monkeypatch: pytest.MonkeyPatch) -> Parsed:
    """Parses every line with its real parser and validates what it builds."""
    for name in list(os.environ):
        if name.startswith("OPD_GATEWAY_"):
            monkeypatch.delenv(name)
    parsed = Parsed()
    for line in lines:
        program = line.argv[0]
        if program == "opd-teacher":
            args = _parse(teacher_parser(), line)
            assert args.command == "serve", line.origin
            server_config(args, with_auth=False)  # the token file is mounted at run time
            assert args.host == "0.0.0.0", f"{line.origin}: a container binds every address"
            parsed.teacher.append((line, args))
        elif program == "opd-gateway":
            args = _parse(gateway_parser(), line)
            given = {k: v for k, v in vars(args).items() if v is not None}
            token = given.pop("auth_token_file", None)  # mounted at run time
            settings = GatewaySettings(**given)
            assert settings.host == "0.0.0.0", line.origin
            parsed.gateway.append((line, settings.model_copy(update={"auth_token_file": token})))
        elif program == "opd-train":
            args = _parse(train_parser(), line)
            assert args.command == "run", line.origin
            config_file = line.files[str(args.config)]
            parsed.trainer.append((line, load_config(config_file, args.set or [])))
        elif program == "python" and line.argv[1] in SCRIPTS:
            rest = line.argv[2:]
            if line.argv[1].endswith("healthcheck.py"):
                assert rest[0] in ("grpc", "http"), line.origin
                assert len(rest) == (3 if rest[0] == "grpc" else 2), line.origin
                if rest[0] == "grpc":
                    assert rest[2] in HEALTH_NAMES, f"{line.origin}: unknown service {rest[2]!r}"
                parsed.health.append((line, rest))
            else:
                assert rest == ["/models"], line.origin
        elif program == "sh" and line.argv[1] == "-c":
            script = shlex.split(line.argv[2])
            script = script[1:] if script[0] == "exec" else script
            inner = CommandLine(f"{line.origin} (sh -c)", script, line.files)
            sub = check_and_parse([inner], monkeypatch)
            parsed.health += sub.health
        else:
            pytest.fail(f"{line.origin}: no known parser for {shlex.join(line.argv)}")
    return parsed


def _env_of(dockerfile: Any) -> dict[str, str]:
    env: dict[str, str] = {}
    for name, args in dockerfile.instructions:
        if name == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def _expand(argv: list[str], env: dict[str, str]) -> list[str]:
    return [re.sub(r"\$(\w+)", lambda m: env.get(m.group(1), m.group(0)), a) for a in argv]


def dockerfile_lines() -> list[CommandLine]:
    lines = []
    for path in dockerfiles():
        dockerfile = read_dockerfile(path)
        origin = f"deploy/docker/{path.name}"
        argv = dockerfile.argv()
        if argv[-1] != "--help":  # the trainer image has no default job
            lines.append(CommandLine(f"{origin} CMD", argv))
        health = _expand(dockerfile.exec_form("HEALTHCHECK"), _env_of(dockerfile))
        lines.append(CommandLine(f"{origin} HEALTHCHECK", health))
    return lines


def compose_lines(model: dict[str, Any], profile: str) -> list[CommandLine]:
    lines = []
    for name, service in model["services"].items():
        image = read_dockerfile(REPO_ROOT / service["build"]["dockerfile"])
        files = {
            c["target"]: Path(model["configs"][c["source"]]["file"])
            for c in service.get("configs", [])
        }
        argv = (service.get("entrypoint") or image.exec_form("ENTRYPOINT")) + (
            service.get("command") or image.exec_form("CMD")
        )
        lines.append(CommandLine(f"compose {profile} {name}", argv, files))
        test = service.get("healthcheck", {}).get("test")
        if test:
            assert test[0] == "CMD", f"compose {name}: healthcheck in exec form"
            lines.append(CommandLine(f"compose {profile} {name} healthcheck", test[1:]))
    return lines


def k8s_lines(objects: list[dict[str, Any]], overlay: str, tmp: Path) -> list[CommandLine]:
    files: dict[str, Path] = {}
    for obj in objects:
        if obj["kind"] == "ConfigMap":
            for key, text in obj["data"].items():
                path = tmp / overlay / obj["metadata"]["name"] / key
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                files[f"/etc/opd/{key}"] = path
    lines = []
    for obj in objects:
        if obj["kind"] in ("Deployment", "Job"):
            for container in containers(obj):
                argv = [*container["command"], *container.get("args", [])]
                origin = f"k8s {overlay} {obj['metadata']['name']}/{container['name']}"
                lines.append(CommandLine(origin, argv, files))
    return lines


@pytest.fixture(scope="module")
def compose_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    home = tmp_path_factory.mktemp("compose-home")
    return {profile: compose_config(profile, home) for profile in PROFILES}


def _port(target: str) -> int:
    return int(target.rsplit(":", 1)[1])


def test_dockerfile_commands_parse_and_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = dockerfile_lines()
    parsed = check_and_parse(lines, monkeypatch)
    assert len(parsed.teacher) == 2 and len(parsed.gateway) == 1
    backends = {line.origin.split()[0]: args.backend for line, args in parsed.teacher}
    assert backends == {
        "deploy/docker/teacher-cpu.Dockerfile": "hf",
        "deploy/docker/teacher-gpu.Dockerfile": "vllm",
    }
    for line, args in parsed.teacher:
        dockerfile = read_dockerfile(REPO_ROOT / line.origin.split()[0])
        exposed = {int(p) for p in (dockerfile.last("EXPOSE") or "").split()}
        assert exposed == {args.port, args.metrics_port}, line.origin
    for line, rest in parsed.health:
        name = line.origin.split()[0].removeprefix("deploy/docker/").removesuffix(".Dockerfile")
        if name.startswith("teacher"):
            assert rest == ["grpc", f"127.0.0.1:{TEACHER_PORT}", SERVICE_NAME], line.origin
        elif name == "trainer":
            assert rest == ["grpc", f"teacher:{TEACHER_PORT}", LIVENESS_SERVICE], line.origin
        else:
            (_, settings) = parsed.gateway[0]
            assert rest == ["http", f"http://127.0.0.1:{settings.port}/healthz"], line.origin
    assert {args.port for _, args in parsed.teacher} == {TEACHER_PORT}
    assert (DOCKER_DIR / "healthcheck.py").is_file()


@pytest.mark.parametrize("profile", PROFILES)
def test_compose_commands_parse_and_agree(
    profile: str, compose_models: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = compose_models[profile]
    services = model["services"]
    parsed = check_and_parse(compose_lines(model, profile), monkeypatch)
    ((teacher_line, teacher),) = parsed.teacher
    teacher_service = services[teacher_line.origin.split()[2]]
    assert teacher.backend == {"cpu": "hf", "gpu": "vllm"}[profile]
    assert [p["target"] for p in teacher_service["ports"]] == [teacher.port]
    assert teacher.auth_token_file == Path("/run/secrets/opd_token")
    grace = teacher_service["stop_grace_period"]
    assert int(grace.removesuffix("s")) >= teacher.drain_timeout_s + 5
    expected_teacher = f"teacher:{teacher.port}"
    ((_, gateway),) = parsed.gateway
    assert gateway.teacher_targets == [expected_teacher]
    assert [p["target"] for p in services["gateway"]["ports"]] == [gateway.port]
    assert str(gateway.auth_token_file) == "/run/secrets/opd_token"
    assert len(parsed.trainer) == 2
    for line, config in parsed.trainer:
        name = line.origin.split()[2]
        assert config.teachers[0].address == (expected_teacher,), name
        assert config.teachers[0].auth_token_file == "/run/secrets/opd_token", name
        assert config.checkpoint_dir == Path("/checkpoints"), name
        assert services[name]["environment"]["OPD_TEACHER"] == expected_teacher
    students = {config.student for _, config in parsed.trainer}
    assert students == {"/models/student-same", "/models/student-cross"}
    for line, rest in parsed.health:
        if rest[0] == "grpc":
            assert _port(rest[1]) == teacher.port, line.origin
            assert rest[2] == SERVICE_NAME, line.origin
        else:
            assert f":{gateway.port}/healthz" in rest[1], line.origin


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_commands_parse_and_agree(
    overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = kustomize(overlay)
    parsed = check_and_parse(k8s_lines(objects, overlay, tmp_path), monkeypatch)
    ((_, teacher),) = parsed.teacher
    assert teacher.backend == {"cpu": "hf", "gpu": "vllm"}[overlay]
    deployment = find(objects, "Deployment", "opd-teacher")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": teacher.port, "metrics": teacher.metrics_port}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["grpc"]["port"] == teacher.port
    # SIGTERM: drain for drain_timeout_s, then server.stop(grace=1 s) and engine shutdown.
    assert pod["terminationGracePeriodSeconds"] >= teacher.drain_timeout_s + 5
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(teacher.metrics_port)
    headless = find(objects, "Service", "opd-teacher-headless")["spec"]
    expected = f"dns:///opd-teacher-headless:{headless['ports'][0]['port']}"
    assert headless["ports"][0]["port"] == teacher.port

    def token_path(kind: str, name: str) -> str:
        spec = find(objects, kind, name)["spec"]["template"]["spec"]
        mounts = {m["name"]: m["mountPath"] for c in spec["containers"] for m in c["volumeMounts"]}
        (auth,) = [v for v in spec["volumes"] if v["name"] == "auth"]
        return f"{mounts['auth']}/{auth['secret']['items'][0]['path']}"

    assert str(teacher.auth_token_file) == token_path("Deployment", "opd-teacher")
    ((_, gateway),) = parsed.gateway
    assert gateway.teacher_targets == [expected]
    assert str(gateway.auth_token_file) == token_path("Deployment", "opd-gateway")
    gateway_container = find(objects, "Deployment", "opd-gateway")["spec"]["template"]["spec"]
    assert gateway_container["containers"][0]["ports"][0]["containerPort"] == gateway.port
    ((_, trainer),) = parsed.trainer
    assert trainer.teachers[0].address == (expected,)
    assert trainer.teachers[0].auth_token_file == token_path("Job", "opd-trainer-example")
    assert str(trainer.checkpoint_dir).startswith("/data/")  # the job's own PVC
    assert Path(trainer.run_dir).parent == Path("/data")
