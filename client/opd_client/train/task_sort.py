"""The second demo task: sort 3–6 digits ascending, with a short counting trace.

Why this module exists: a student that learns from several teachers (README "Several
teachers") needs a second task, expert-taught by a second teacher, to show that routing
each prompt to its expert teaches both tasks in one run. Like the addition task
(`task.py`) it is deterministic, needs no download and has the shape of a reasoning
task: a `<think>…</think>` trace, then a final answer that is a plain digit string, so
the addition task's verifier (`opd_client.train.task:exact_match`, the text after
`</think>`) checks it unchanged. The trace counts each digit that occurs, smallest first
(`digit:count`), so each step is local — the next larger digit of the prompt and how
often it occurs — and the answer writes each digit out `count` times:

    Sort 5 3 8 5 1.  ->  <think>1:1,3:1,5:2,8:1</think>13558

Train and held-out prompts are disjoint by construction: a hash of the digit sequence
decides which split it belongs to.

What it does not know: tokenizers, models and the trainer; it is plain Python on text.

    python -m opd_client.train.task_sort --out data/ --train 5000 --heldout 500
"""

from __future__ import annotations

import argparse
import hashlib
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from opd_client.train.task import (
    THINK_END,
    THINK_START,
    Record,
    Split,
    write_jsonl,
)

TASK_NAME = "sorting"
MIN_DIGITS = 3
MAX_DIGITS = 6
# One sequence in HELDOUT_BUCKETS of 100 (by hash) is held out; the rest is for training.
HELDOUT_BUCKETS = 10
_PROMPT_RE = re.compile(r"Sort ((?:\d )*\d)\.")
_SPLITS: tuple[Split, ...] = ("train", "heldout")

Digits = tuple[int, ...]


def _check(digits: Sequence[int]) -> Digits:
    out = tuple(digits)
    if not MIN_DIGITS <= len(out) <= MAX_DIGITS:
        raise ValueError(f"need {MIN_DIGITS}..{MAX_DIGITS} digits, got {len(out)}")
    if any(not isinstance(d, int) or not 0 <= d <= 9 for d in out):
        raise ValueError(f"digits must be integers 0..9, got {list(out)}")
    return out


def prompt_text(digits: Sequence[int]) -> str:
    """The user message that asks to sort `digits`, e.g. "Sort 5 3 8 1."."""
    return "Sort " + " ".join(str(d) for d in _check(digits)) + "."


def parse_prompt(prompt: str | Sequence[Mapping[str, str]]) -> Digits:
    """The digits of a sorting prompt (a string, or chat messages whose last user turn is
    the question). Raises ValueError when the prompt is not one of this task's."""
    if not isinstance(prompt, str):
        users = [m["content"] for m in prompt if m.get("role") == "user"]
        if not users:
            raise ValueError("prompt has no user message")
        prompt = users[-1]
    match = _PROMPT_RE.search(prompt)
    if match is None:
        raise ValueError(f"not a sorting prompt: {prompt!r}")
    return _check([int(d) for d in match.group(1).split(" ")])


def sorted_answer(digits: Sequence[int]) -> str:
    """The final answer: the digits ascending, as one string (leading zeros kept)."""
    return "".join(str(d) for d in sorted(_check(digits)))


def reasoning_trace(digits: Sequence[int]) -> str:
    """Each digit that occurs with its count, smallest first: 5 3 8 5 1 -> "1:1,3:1,5:2,8:1"."""
    counts = Counter(_check(digits))
    return ",".join(f"{d}:{counts[d]}" for d in sorted(counts))


def reference_solution(digits: Sequence[int]) -> str:
    """The teacher's target response text: the trace in think markers, then the answer."""
    return f"{THINK_START}{reasoning_trace(digits)}{THINK_END}{sorted_answer(digits)}"


def reference_for(record: Mapping[str, Any]) -> str:
    """The reference response for a task record."""
    return reference_solution(parse_prompt(record["messages"]))


def split_of(digits: Sequence[int]) -> Split:
    """Which split the digit sequence belongs to: a fixed hash, never a draw."""
    key = "".join(str(d) for d in _check(digits))
    digest = hashlib.sha256(f"{TASK_NAME}:{key}".encode()).digest()
    return "heldout" if int.from_bytes(digest[:8], "big") % 100 < HELDOUT_BUCKETS else "train"


def make_record(digits: Sequence[int]) -> Record:
    return {
        "messages": [{"role": "user", "content": prompt_text(digits)}],
        "answer": sorted_answer(digits),
        "task": TASK_NAME,
    }


def make_records(n: int, split: Split, seed: int = 0) -> list[Record]:
    """`n` distinct problems of `split`, drawn with `seed`: a length of 3..6 digits with
    equal chance, then each digit uniform on 0..9 (repeats allowed). Deterministic, and
    `make_records(n)` is a prefix of `make_records(m > n)`."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"{TASK_NAME}:{split}:{seed}")
    seen: set[Digits] = set()
    out: list[Record] = []
    limit = 50 * n + 1000
    while len(out) < n:
        limit -= 1
        if limit < 0:
            raise ValueError(f"cannot draw {n} distinct {split} problems")
        length = rng.randint(MIN_DIGITS, MAX_DIGITS)
        digits = tuple(rng.randint(0, 9) for _ in range(length))
        if digits in seen or split_of(digits) != split:
            continue
        seen.add(digits)
        out.append(make_record(digits))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the sorting task as JSONL.")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--train", type=int, default=5000, help="train prompts")
    parser.add_argument("--heldout", type=int, default=500, help="held-out prompts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    plan: tuple[tuple[Split, int], ...] = (("train", args.train), ("heldout", args.heldout))
    for split, n in plan:
        print(write_jsonl(make_records(n, split, args.seed), args.out / f"{split}.jsonl"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
