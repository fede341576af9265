"""Says whether opd's own requirements accept what another installer put in a venv.

`make install-vllm` installs opd's packages into `.venv-vllm` with `--no-deps`, because
vLLM pins its own torch and transformers and pip must not re-resolve them. This check
reads each named distribution's `Requires-Dist` (extras left out) and compares it with
what is installed, so a torch or transformers that opd-teacher does not accept fails the
install instead of a test later:

    .venv-vllm/bin/python -m opd_teacher.depcheck opd-teacher opd-client opd-protos
"""

from __future__ import annotations

import sys
from importlib import metadata

from packaging.requirements import Requirement
from packaging.version import Version


def unmet(distribution: str) -> list[str]:
    """One line per requirement of `distribution` that is missing or of a refused version."""
    problems = []
    for line in metadata.requires(distribution) or []:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # an extra's requirement, or another platform's
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{distribution} needs {requirement}: not installed")
            continue
        if not requirement.specifier.contains(Version(installed), prereleases=True):
            problems.append(f"{distribution} needs {requirement}: {installed} is installed")
    return problems


def main(argv: list[str]) -> int:
    problems = [problem for name in argv for problem in unmet(name)]
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        versions = ", ".join(f"{n} {metadata.version(n)}" for n in ("torch", "transformers"))
        print(f"requirements of {', '.join(argv)} met ({versions})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
