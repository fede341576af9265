"""The tokenizer bridge on real production tokenizers (Qwen2, Llama 3, GPT-2 and a
SentencePiece Llama), from the vocabulary-only GGUF files of the llama-cpp-python sdist
(tests/real_tokenizers.py fetches and converts them once; a failed download fails).

Every ordered pair on seven text classes: the bytes round-trip, an aligned position
reads exactly the teacher row that ends at its first byte, identity pairs align 100%,
byte-level BPE pairs align at least 60% on English prose.

The statistics table for the README comes from the same code (run from the repo root):
    .venv/bin/python tests/backends/test_align_real_tokenizers.py \
        > client/opd_client/align/README-stats.md
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

# tests/ is not a package; the helper module sits beside this folder.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from real_tokenizers import BYTE_LEVEL_BPE, GGUF_FILES, ensure_real_tokenizers, gguf_path

from opd_client.align import AlignConfig, AlignStats, TokenizerBridge, TokenizerSide
from opd_client.align.cli import main, stand_in_rows

TEXTS: dict[str, str] = {
    "prose": (
        "The committee met on Tuesday to discuss the proposal. After a long debate, most "
        "members agreed that the plan was sensible, although several of them worried about "
        "its cost and asked for a more detailed budget before the final vote."
    ),
    "code": (
        "def fibonacci(n: int) -> list[int]:\n    seq = [0, 1]\n    while len(seq) < n:\n"
        "        seq.append(seq[-1] + seq[-2])\n    return seq[:n]\n\nprint(fibonacci(10))\n"
    ),
    "math": (
        r"Let $f(x) = \frac{1}{\sqrt{2\pi\sigma^2}} e^{-\frac{(x-\mu)^2}{2\sigma^2}}$. "
        r"Then $\int_{-\infty}^{\infty} f(x)\,dx = 1$ and $\mathbb{E}[X] = \mu$."
    ),
    "numbers": "3.14159 2,718,281 1e-9 0x1F 12345678901234567890 -42 +7.5% 1/3 2024-05-17",
    "whitespace": "a  b\t\tc\n\n\n   d    \n e     f\r\n\tg  ",
    "cjk": "日本語のテキストと中文文本，以及한국어 텍스트。東京は大きい都市です。",
    "emoji": "I ❤️ 🍕! Family: 👩‍👩‍👧‍👦, flag 🇯🇵, faces 😀😀🙃 and ✨done✨",
}
NAMES = list(GGUF_FILES)
PAIRS = list(itertools.product(NAMES, NAMES))


@pytest.fixture(scope="session")
def sides() -> dict[str, TokenizerSide]:
    dirs = ensure_real_tokenizers()
    return {name: TokenizerSide.load(path) for name, path in dirs.items()}


@pytest.fixture(scope="session")
def bridges(sides, tmp_path_factory) -> dict[tuple[str, str], TokenizerBridge]:  # type: ignore[no-untyped-def]
    cfg = AlignConfig(cache_dir=str(tmp_path_factory.mktemp("align-cache")))
    return {(s, t): TokenizerBridge(sides[s], sides[t], cfg) for s, t in PAIRS}


def pair_stats(br: TokenizerBridge, text: str) -> tuple[AlignStats, object]:
    ids = br.student.encode(text).ids_M.tolist()
    plan = br.plan("Please continue.", ids)
    support = br.support(plan, *stand_in_rows(plan, 32, br.teacher_roles.get("eos")))
    return support.stats, plan


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", list(TEXTS))
def test_decoding_round_trips(sides, name, kind) -> None:  # type: ignore[no-untyped-def]
    side, text = sides[name], TEXTS[kind]
    enc = side.encode(text)
    assert b"".join(side.piece(i) for i in enc.ids_M.tolist()) == text.encode()
    if name in BYTE_LEVEL_BPE:  # SentencePiece's decoder strips a leading space by design
        assert side.hf.decode(enc.ids_M.tolist()) == text
    spans = enc.spans_M2
    assert spans[0, 0] == 0 and spans[-1, 1] == len(text.encode())
    assert (spans[1:, 0] == spans[:-1, 1]).all()


@pytest.mark.parametrize(("student", "teacher"), PAIRS)
def test_alignment_reads_only_rows_ending_at_the_same_byte(bridges, student, teacher) -> None:  # type: ignore[no-untyped-def]
    br = bridges[(student, teacher)]
    assert br.identity == (student == teacher)
    for kind, text in TEXTS.items():
        stats, plan = pair_stats(br, text)
        assert plan.response_text == text, kind
        teacher_side = br.teacher
        got = b"".join(teacher_side.piece(i) for i in plan.teacher_response_ids.tolist())
        assert got == text.encode(), kind
        n = plan.num_prompt_tokens
        ends = np.concatenate(
            [
                [0],
                np.cumsum([len(teacher_side.piece(i)) for i in plan.teacher_response_ids.tolist()]),
            ]
        )
        for t in np.flatnonzero(plan.row_T >= 0):
            row = int(plan.row_T[t])
            assert n - 1 <= row < len(plan.teacher_ids_N), (kind, t)
            assert ends[row - (n - 1)] == plan.student_spans_T2[t, 0], (kind, t)
        if student == teacher:
            assert stats.aligned_fraction == 1.0, kind
            assert stats.mapped_mass_fraction == 1.0, kind
        else:
            assert stats.aligned_fraction > 0.3, (kind, stats.aligned_fraction)


@pytest.mark.parametrize(
    ("student", "teacher"),
    [p for p in PAIRS if p[0] in BYTE_LEVEL_BPE and p[1] in BYTE_LEVEL_BPE],
)
def test_byte_level_pairs_align_most_english_prose(bridges, student, teacher) -> None:  # type: ignore[no-untyped-def]
    stats, _ = pair_stats(bridges[(student, teacher)], TEXTS["prose"])
    assert stats.aligned_fraction >= 0.6
    assert stats.mapped_mass_fraction >= 0.6


def test_roles_found_from_tables_and_templates(bridges) -> None:  # type: ignore[no-untyped-def]
    qwen = bridges[("qwen2", "llama3")].student_roles
    assert qwen["end_of_turn"] != qwen["eos"]  # <|im_end|> from the chat template
    llama3 = bridges[("qwen2", "llama3")].teacher_roles
    # Qwen's end-of-turn maps to Llama 3's by role in the top-K table.
    vmap = bridges[("llama3", "qwen2")].vocab_map
    assert vmap.student_id_V[qwen["end_of_turn"]] == llama3["end_of_turn"]


def test_cli_reads_a_gguf_file(bridges, capsys) -> None:  # type: ignore[no-untyped-def]
    dirs = ensure_real_tokenizers()
    args = ["--student", str(gguf_path("gpt2")), "--teacher", str(dirs["qwen2"])]
    assert main([*args, "--text", TEXTS["emoji"], "--json"]) == 0
    assert '"aligned_fraction"' in capsys.readouterr().out


def stats_markdown() -> str:
    dirs = ensure_real_tokenizers()
    sides = {name: TokenizerSide.load(path) for name, path in dirs.items()}
    lines = [
        "# Alignment statistics on real tokenizers",
        "",
        "Produced by `.venv/bin/python tests/backends/test_align_real_tokenizers.py` (the "
        "texts of that test; GGUF vocabularies from llama-cpp-python 0.3.36). Each cell: "
        "aligned fraction of student positions / share of a one-hot stand-in teacher's "
        "mass (its actual next token) that maps into the student vocabulary. `vocab` is the "
        "share of the teacher's whole vocabulary with a student token of the same bytes.",
        "",
        "| student → teacher | vocab | " + " | ".join(TEXTS) + " |",
        "|---|---|" + "---|" * len(TEXTS),
    ]
    for s, t in PAIRS:
        br = TokenizerBridge(sides[s], sides[t])
        cells = []
        for text in TEXTS.values():
            stats, _ = pair_stats(br, text)
            cells.append(f"{stats.aligned_fraction:.2f} / {stats.mapped_mass_fraction:.2f}")
        lines.append(
            f"| {s} → {t} | {br.vocab_map.mapped_fraction:.2f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(stats_markdown())
