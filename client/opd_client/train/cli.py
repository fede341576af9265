"""`opd-train`: the trainer's command line; each subcommand is a thin launcher over the
library.

    opd-train align --student STUDENT_TOKENIZER --teacher TEACHER_TOKENIZER --text "Hi 😀"
    opd-train align --student s.gguf --teacher teacher-dir/ --file essay.txt --json

Subcommands mount their own arguments (`add_*_subparser`) and set `func`, so this file
only dispatches.
"""

from __future__ import annotations

import argparse
import sys

from opd_client.align.cli import add_align_subparser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="opd-train",
        description="opd's trainer: on-policy distillation of a student from a shared "
        "teacher service.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_align_subparser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
