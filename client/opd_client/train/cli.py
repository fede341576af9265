"""`opd-train`: the trainer's command line; each subcommand is a thin launcher over the
library (`opd_client.train.loop.train`, `checkpoint.export_checkpoint`, `config`).

    opd-train run run.yaml --set optim.lr=3e-4 --set teachers.0.address=127.0.0.1:50051
    opd-train export runs/demo/checkpoints/step-00000100 exported-student/
    opd-train config run.yaml --show
    opd-train eval run.yaml --checkpoint runs/demo        # held-out accuracy of the latest
    opd-train plot runs/lsm runs/baseline --out curves.png
    opd-train align --student STUDENT_TOKENIZER --teacher TEACHER_TOKENIZER --text "Hi 😀"

Exit codes: 0 done; 2 bad input (one line on stderr, nothing in the run directory
touched); 3 the teacher stayed unavailable past teacher_unavailable_timeout_s (a
checkpoint was written first; rerun the same command to resume).
Subcommands mount their own arguments and set `func`, so `main` only dispatches.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from opd_client.align.cli import add_align_subparser

EXIT_BAD_INPUT = 2
EXIT_TEACHER_GONE = 3


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"opd-train: error: {message}", file=sys.stderr)
    return code


def _quiet_libraries() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def run_command(args: argparse.Namespace) -> int:
    from opd_client.train.checkpoint import UnsafeCheckpointError
    from opd_client.train.config import ConfigError
    from opd_client.train.config_load import load_config
    from opd_client.train.pipeline import TeacherUnavailableError

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    _quiet_libraries()
    try:
        config = load_config(args.config, args.set or [])
        from opd_client.train.loop import train

        result = train(config, allow_teacher_change=args.allow_teacher_change)
    except (ConfigError, UnsafeCheckpointError) as err:
        return _fail(str(err))
    except TeacherUnavailableError as err:
        return _fail(f"{err}; checkpoint written, rerun the same command to resume", 3)
    last = result.last_checkpoint
    print(
        f"opd-train: {result.steps_done} steps from step {result.start_step}; "
        f"last checkpoint {last.name if last else 'none'}",
        file=sys.stderr,
    )
    return 0


def export_command(args: argparse.Namespace) -> int:
    from opd_client.train.checkpoint import export_checkpoint

    try:
        out = export_checkpoint(Path(args.checkpoint), Path(args.out))
    except (FileNotFoundError, FileExistsError, OSError) as err:
        return _fail(str(err))
    print(out)
    return 0


def config_command(args: argparse.Namespace) -> int:
    from opd_client.train.config import ConfigError, TeacherConfig, TrainConfig
    from opd_client.train.config_load import describe, load_config

    try:
        if args.config is None and not args.set:
            config: Any = TrainConfig(
                student="STUDENT_DIR",
                prompts="PROMPTS.jsonl",
                run_dir="RUN_DIR",
                teachers=(TeacherConfig(address=("127.0.0.1:50051",)),),
            )
        else:
            config = load_config(args.config, args.set or [])
    except ConfigError as err:
        return _fail(str(err))
    print(describe(config))
    return 0


def eval_command(args: argparse.Namespace) -> int:
    from opd_client.train.config import ConfigError
    from opd_client.train.config_load import load_config
    from opd_client.train.evaluate import evaluate_checkpoint

    _quiet_libraries()
    try:
        config = load_config(args.config, args.set or [])
        res = evaluate_checkpoint(config, args.checkpoint)
    except ConfigError as err:
        return _fail(str(err))
    except (FileNotFoundError, ValueError) as err:
        return _fail(str(err))
    for answer, response, ok in res.samples:
        print(f"{'ok ' if ok else 'bad'} answer={answer!r} response={response!r}", file=sys.stderr)
    print(json.dumps(res.to_record(-1) | {"checkpoint": str(args.checkpoint or config.student)}))
    return 0


def plot_command(args: argparse.Namespace) -> int:
    from opd_client.train.plots import plot_runs

    try:
        out = plot_runs(args.run_dirs, args.out, args.label)
    except ValueError as err:
        return _fail(str(err))
    print(out)
    return 0


def add_train_subparsers(commands: Any) -> None:
    run = commands.add_parser("run", help="train a student by on-policy distillation")
    run.add_argument("config", type=Path, help="YAML config file")
    run.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a field (dotted key)"
    )
    run.add_argument(
        "--allow-teacher-change",
        action="store_true",
        help="resume even if the teacher's fingerprint differs from the checkpoint's",
    )
    run.add_argument("--log-level", default="warning", choices=["debug", "info", "warning"])
    run.set_defaults(func=run_command)

    export = commands.add_parser("export", help="save a checkpoint's student for transformers")
    export.add_argument("checkpoint", help="a step-* directory, a checkpoints dir or a run dir")
    export.add_argument("out", help="output directory (must not exist or be empty)")
    export.set_defaults(func=export_command)

    ev = commands.add_parser("eval", help="held-out accuracy of a checkpoint (eval.* fields)")
    ev.add_argument("config", type=Path, help="YAML config file (its eval section is used)")
    ev.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="a step-* directory, a checkpoints dir or a run dir; default: the config's student",
    )
    ev.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field")
    ev.set_defaults(func=eval_command)

    plot = commands.add_parser("plot", help="draw the curves of one or more runs into a PNG")
    plot.add_argument("run_dirs", type=Path, nargs="+", help="run directories to overlay")
    plot.add_argument("--out", type=Path, default=Path("curves.png"), help="PNG to write")
    plot.add_argument(
        "--label", action="append", help="legend name per run, in order (default: dir names)"
    )
    plot.set_defaults(func=plot_command)

    show = commands.add_parser("config", help="print the resolved config, every field documented")
    show.add_argument("config", type=Path, nargs="?", default=None, help="YAML config file")
    show.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field")
    show.add_argument("--show", action="store_true", help="print it (the default)")
    show.set_defaults(func=config_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="opd-train",
        description="opd's trainer: on-policy distillation of a student from a shared "
        "teacher service.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_train_subparsers(commands)
    add_align_subparser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
