"""The demo task: 2–3-digit addition with a short, column-by-column reasoning trace.

Why this module exists: the trainer's demo and the method benchmark need a task that is
deterministic, needs no download, is learnable by a 2–4-layer model on a CPU in minutes,
and still has the shape of a reasoning task — a `<think>…</think>` trace followed by a
final answer that an exact-match verifier checks. The trace works the columns from the
ones digit up, writing the carry it takes in, so each step is local:

    What is 347+86?  ->  <think>7+6=13,4+8+1=13,3+0+1=4</think>433

Train and held-out prompts are disjoint by construction: a hash of the operand pair
decides which split a pair belongs to, so no pair can be in both.

What it does not know: tokenizers, models and the trainer; it is plain Python on text.

    python -m opd_client.train.task --out data/ --train 5000 --heldout 500
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

Split = Literal["train", "heldout"]
Record = dict[str, Any]

TASK_NAME = "addition"
THINK_START = "<think>"
THINK_END = "</think>"
# One pair in HELDOUT_BUCKETS of 100 (by hash) is held out; the rest is for training.
HELDOUT_BUCKETS = 10
# End-of-turn texts a decoded response may still carry; the verifier ignores them.
END_MARKERS = ("<|im_end|>", "<|eos|>", "</s>", "<|endoftext|>")
_PROMPT_RE = re.compile(r"What is (\d+)\+(\d+)\?")
_SPLITS: tuple[Split, ...] = ("train", "heldout")


def prompt_text(a: int, b: int) -> str:
    """The user message that asks for `a + b`."""
    return f"What is {a}+{b}?"


def parse_prompt(prompt: str | Sequence[Mapping[str, str]]) -> tuple[int, int]:
    """The operands of a task prompt (a string, or chat messages whose last user turn is
    the question). Raises ValueError when the prompt is not one of this task's."""
    if not isinstance(prompt, str):
        users = [m["content"] for m in prompt if m.get("role") == "user"]
        if not users:
            raise ValueError("prompt has no user message")
        prompt = users[-1]
    match = _PROMPT_RE.search(prompt)
    if match is None:
        raise ValueError(f"not an addition prompt: {prompt!r}")
    return int(match.group(1)), int(match.group(2))


def reasoning_trace(a: int, b: int) -> str:
    """The column steps from the ones digit up, e.g. 347+86 -> "7+6=13,4+8+1=13,3+0+1=4".

    Each step is "x+y=s" or, when a carry comes in, "x+y+1=s"; a missing digit of the
    shorter operand is written 0. The answer's digits are the steps' last digits read
    backwards, with the last step's tens digit first when it has one.
    """
    if a < 0 or b < 0:
        raise ValueError(f"operands must be non-negative, got {a} and {b}")
    da, db = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        steps.append(f"{x}+{y}+1={s}" if carry else f"{x}+{y}={s}")
        carry = s // 10
    return ",".join(steps)


def reference_solution(a: int, b: int) -> str:
    """The teacher's target response text: the trace in think markers, then the sum."""
    return f"{THINK_START}{reasoning_trace(a, b)}{THINK_END}{a + b}"


def reference_for(record: Mapping[str, Any]) -> str:
    """The reference response for a task record."""
    return reference_solution(*parse_prompt(record["messages"]))


def split_of(a: int, b: int) -> Split:
    """Which split the ordered pair (a, b) belongs to: a fixed hash, never a draw."""
    digest = hashlib.sha256(f"{TASK_NAME}:{a}+{b}".encode()).digest()
    return "heldout" if int.from_bytes(digest[:8], "big") % 100 < HELDOUT_BUCKETS else "train"


def make_record(a: int, b: int) -> Record:
    return {
        "messages": [{"role": "user", "content": prompt_text(a, b)}],
        "answer": str(a + b),
        "task": TASK_NAME,
    }


def make_records(n: int, split: Split, seed: int = 0) -> list[Record]:
    """`n` distinct problems of `split`, drawn with `seed`. Each operand has 2 or 3 digits
    with equal chance, so every length combination is common. Deterministic."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"{TASK_NAME}:{split}:{seed}")
    seen: set[tuple[int, int]] = set()
    out: list[Record] = []
    limit = 50 * n + 1000
    while len(out) < n:
        limit -= 1
        if limit < 0:
            raise ValueError(f"cannot draw {n} distinct {split} problems")
        a, b = (rng.randint(10, 99) if rng.random() < 0.5 else rng.randint(100, 999) for _ in "ab")
        if (a, b) in seen or split_of(a, b) != split:
            continue
        seen.add((a, b))
        out.append(make_record(a, b))
    return out


def write_jsonl(records: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write one JSON object per line; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return p


def read_jsonl(path: str | Path) -> list[Record]:
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def extract_answer(response: str) -> str | None:
    """The final answer: what follows the last `</think>`, stripped of whitespace and of
    trailing end-of-turn texts; None when there is no `</think>` or the rest is not a
    plain non-negative integer."""
    head, sep, tail = response.rpartition(THINK_END)
    if not sep or THINK_START not in head:
        return None
    tail = tail.strip()
    stripped = True
    while stripped:
        stripped = False
        for marker in END_MARKERS:
            if tail.endswith(marker):
                tail, stripped = tail[: -len(marker)].rstrip(), True
    return tail if tail.isascii() and tail.isdigit() else None


def exact_match(prompt: Any, response: str, answer: str) -> bool:
    """The verifier (`opd_client.train.task:exact_match`): True when the answer after
    `</think>` equals `answer` exactly. `prompt` is accepted for the verifier signature
    (prompt, response, answer) and not used."""
    del prompt
    return extract_answer(response) == str(answer).strip()


def accuracy(records: Sequence[Mapping[str, Any]], responses: Sequence[str]) -> float:
    """Fraction of `responses` that `exact_match` accepts against their records' answers."""
    if not records:
        return 0.0
    hits = sum(
        exact_match(r["messages"], resp, r["answer"])
        for r, resp in zip(records, responses, strict=True)
    )
    return hits / len(records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the addition task as JSONL.")
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
