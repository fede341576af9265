"""`opd-train align`: show how a text splits on both tokenizers and what aligns.

    opd-train align --student tok/student --teacher tok/teacher --text "Hello, wörld 😀"
    python -m opd_client.align.cli --student s.gguf --teacher t/ --file essay.txt --json

Why: before a cross-tokenizer run, a user wants to see how much teacher signal survives
for their texts: both tokenizations, which student positions have a teacher row at the
same byte, and the statistics the trainer would log.

What it does not know: the teacher model. With no service to ask, it scores with a
stand-in teacher that puts all its mass on the token the teacher's tokenizer actually
produces next (K slots, the rest empty), so `mapped_mass_*` says how often the
teacher's own next token has a student counterpart. Exit code 0, or 2 with one line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from opd_client.align.bridge import AlignmentPlan, TokenizerBridge
from opd_client.align.config import AlignConfig
from opd_client.align.errors import AlignError
from opd_client.align.tokenizer import TokenizerSide


def add_align_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--student", required=True, help="tokenizer dir or .gguf file")
    parser.add_argument("--teacher", required=True, help="tokenizer dir or .gguf file")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the response text to split")
    src.add_argument("--file", type=Path, help="read the response text from this file")
    parser.add_argument("--prompt", default="Continue the text.", help="user prompt (rendered)")
    parser.add_argument("--top-k", type=int, default=32, dest="top_k", help="K, 1..4096")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def add_align_subparser(subparsers: Any) -> argparse.ArgumentParser:
    """Mount as `opd-train align`; the parser's `func` default runs it."""
    parser = subparsers.add_parser("align", help="show how a text aligns across tokenizers")
    add_align_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def stand_in_rows(plan: AlignmentPlan, k: int, eos: int | None) -> tuple[np.ndarray, np.ndarray]:
    """[P, K] rows of a one-hot teacher: row p puts log-prob 0 on teacher token p+1."""
    ids = plan.teacher_ids_N.astype(np.int64)
    nxt = np.concatenate([ids[plan.score_from + 1 :], [eos if eos is not None else -1]])
    topk_ids_PK = np.full((len(nxt), k), -1, dtype=np.int32)
    topk_logprobs_PK = np.full((len(nxt), k), -np.inf, dtype=np.float32)
    topk_ids_PK[:, 0] = nxt
    topk_logprobs_PK[:, 0] = 0.0
    return topk_ids_PK, topk_logprobs_PK


def _token(side: TokenizerSide, idx: int, span: tuple[int, int], text: bytes) -> dict[str, Any]:
    piece = text[span[0] : span[1]] if span[1] > span[0] else side.token_str(idx).encode()
    return {
        "id": int(idx),
        "text": piece.decode("utf-8", errors="backslashreplace"),
        "span": [int(span[0]), int(span[1])],
    }


def analyse(args: argparse.Namespace) -> dict[str, Any]:
    if not 1 <= args.top_k <= 4096:
        raise ValueError(f"--top-k must be in 1..4096, got {args.top_k}")
    if args.file is not None:
        try:
            text = Path(args.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"cannot read --file {str(args.file)!r}: {err}") from err
    else:
        text = args.text
    student = TokenizerSide.load(args.student)
    teacher = TokenizerSide.load(args.teacher)
    bridge = TokenizerBridge(student, teacher, AlignConfig(special_policy="none"))
    enc = student.encode(text)
    plan = bridge.plan(args.prompt, enc.ids_M.tolist())
    rows = stand_in_rows(plan, args.top_k, bridge.teacher_roles.get("eos"))
    support = bridge.support(plan, *rows)
    data = text.encode("utf-8")
    spans_s = plan.student_spans_T2.tolist()
    spans_t = plan.teacher_spans_M2.tolist()
    return {
        "student": args.student,
        "teacher": args.teacher,
        "identity": bridge.identity,
        "student_tokens": [
            _token(student, i, tuple(s), data)
            for i, s in zip(enc.ids_M.tolist(), spans_s, strict=True)
        ],
        "teacher_tokens": [
            _token(teacher, i, tuple(s), data)
            for i, s in zip(plan.teacher_response_ids.tolist(), spans_t, strict=True)
        ],
        "aligned": [bool(a) for a in plan.aligned_T],
        "aligned_fraction": support.stats.aligned_fraction,
        "teacher_vocab_mapped_fraction": bridge.vocab_map.mapped_fraction,
        "stats": support.stats.to_dict(),
    }


def _print_human(report: dict[str, Any]) -> None:
    print(
        f"student {report['student']}  teacher {report['teacher']}  identity={report['identity']}"
    )
    print(f"student tokens ({len(report['student_tokens'])}; * = aligned):")
    print(
        "  "
        + " ".join(
            ("*" if a else " ") + repr(t["text"])
            for t, a in zip(report["student_tokens"], report["aligned"], strict=True)
        )
    )
    print(f"teacher tokens ({len(report['teacher_tokens'])}):")
    print("  " + " ".join(repr(t["text"]) for t in report["teacher_tokens"]))
    stats = report["stats"]
    print(f"aligned fraction {report['aligned_fraction']:.3f}")
    print(f"teacher vocabulary mapped {report['teacher_vocab_mapped_fraction']:.3f}")
    print(f"next teacher token mapped (one-hot stand-in) {stats['mapped_mass_fraction']:.3f}")
    print(f"masked by reason {stats['masked_by_reason']}")


def run(args: argparse.Namespace) -> int:
    try:
        report = analyse(args)
    except (AlignError, ValueError) as err:
        print(f"opd-train align: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        _print_human(report)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="opd-train align", description=__doc__.split("\n\n")[2])
    add_align_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse exits 2 on bad usage, 0 on --help
        return int(exit_.code or 0)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
