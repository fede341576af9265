"""Generates the Python code of opd's contract from `opd/teacher/v1/teacher.proto`.

Run by the package build (hatch_build.py) and by `make` whenever the `.proto` is newer
than its generated modules, so an editable install never serves a stale contract. The
generated files sit next to the `.proto`, are git-ignored and never edited by hand:
protoc writes `from opd.teacher.v1 import teacher_pb2`, which is the import path opd uses.

    python protos/codegen.py
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILES = ("opd/teacher/v1/teacher.proto",)


def generate(proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Runs protoc with the python, grpc and pyi plugins; returns the files written."""
    from grpc_tools import protoc  # build-time dependency only

    include = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{include}",
        f"--python_out={proto_root}",
        f"--pyi_out={proto_root}",
        f"--grpc_python_out={proto_root}",
        *(str(proto_root / name) for name in PROTO_FILES),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {', '.join(PROTO_FILES)}")
    written = []
    for name in PROTO_FILES:
        stem = proto_root / name
        base = stem.with_suffix("")
        written += [base.with_name(base.name + s) for s in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")]
    return written


if __name__ == "__main__":
    for path in generate():
        print(path.relative_to(PROTO_ROOT), file=sys.stderr)
