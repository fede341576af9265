"""The tokenizer bridge on tiny tokenizers built in the test (no files, no hub).

Two byte-level BPE tokenizers of different sizes and special tokens (one with a chat
template and `<think>` markers), and a SentencePiece-style one with byte fallback. They
exercise alignment, role mapping, masking policies, the support arrays, the on-disk
vocabulary-map cache and the bad-input errors; real tokenizers are in tests/backends.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from opd_client.align import (
    AlignConfig,
    LossyEncodingError,
    MaskReason,
    TokenizerBridge,
    TokenizerLoadError,
    TokenizerSide,
    collate,
)
from opd_client.align.vocab_map import EXACT, PREFIX

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "def add(a, b):\n    return a + b\n",
    "Numbers 12345 and 3.14159; wörld, naïve café. 日本語 😀",
    "<think>Let me think about it.</think> The answer is 42.",
]
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_level(vocab_size: int, specials: list[str], template: str | None = None) -> TokenizerSide:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=specials[0])
    if template:
        hf.chat_template = template
    return TokenizerSide(hf, f"byte-level-{vocab_size}")


def sentencepiece_like(normalizer: normalizers.Normalizer | None = None) -> TokenizerSide:
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for c in "▁abcdefghijklmnopqrstuvwxyzTA.,?0123456789":
        vocab.setdefault(c, len(vocab))
    merges = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("▁", "a"), ("i", "s")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    return TokenizerSide(hf, "sentencepiece-like")


@pytest.fixture(scope="module")
def sides() -> dict[str, TokenizerSide]:
    return {
        "a": byte_level(320, ["<|endoftext|>"]),
        "b": byte_level(400, ["<|im_end|>", "<|im_start|>", "<think>", "</think>"], TEMPLATE),
        "spm": sentencepiece_like(),
    }


def bridge(
    sides: dict[str, TokenizerSide], s: str, t: str, tmp: Path, **kw: object
) -> TokenizerBridge:
    return TokenizerBridge(sides[s], sides[t], AlignConfig(cache_dir=str(tmp), **kw))  # type: ignore[arg-type]


def check_rows_end_at_starts(plan) -> None:  # type: ignore[no-untyped-def]
    """The invariant: an aligned position's row is the teacher token ending at its start."""
    n = plan.num_prompt_tokens
    for t in np.flatnonzero(plan.row_T >= 0):
        start, row = int(plan.student_spans_T2[t, 0]), int(plan.row_T[t])
        end = 0 if row == n - 1 else int(plan.teacher_spans_M2[row - n, 1])
        assert end == start, (t, row, start, end)


TEXTS = ["The quick brown fox, naïve café.", "def add(a, b):\n    return a", "x 日本語 😀😀 42"]


@pytest.mark.parametrize("pair", [("a", "b"), ("b", "a"), ("a", "spm"), ("spm", "b")])
@pytest.mark.parametrize("text", TEXTS)
def test_alignment_invariant_and_lossless_retokenization(sides, tmp_path, pair, text) -> None:  # type: ignore[no-untyped-def]
    br = bridge(sides, *pair, tmp_path)
    assert not br.identity
    ids = sides[pair[0]].encode(text).ids_M.tolist()
    plan = br.plan("hello", ids)
    assert plan.response_bytes == text.encode() and plan.response_text == text
    teacher = sides[pair[1]]
    assert b"".join(teacher.piece(i) for i in plan.teacher_response_ids.tolist()) == text.encode()
    check_rows_end_at_starts(plan)
    assert plan.row_T[0] == plan.num_prompt_tokens - 1  # byte 0 reads the last prompt row
    assert 0 < plan.aligned_T.mean() <= 1
    # Where y_t is exactly one teacher token, that token is the one after the row.
    one = np.flatnonzero(plan.teacher_token_T >= 0)
    assert (plan.teacher_token_T[one] == plan.row_T[one] + 1).all()


def test_identity_pair_passes_ids_and_aligns_everything(sides, tmp_path) -> None:  # type: ignore[no-untyped-def]
    other = byte_level(320, ["<|endoftext|>"])  # a separate build of the same tokenizer
    br = TokenizerBridge(
        sides["a"], other, AlignConfig(cache_dir=str(tmp_path), special_policy="none")
    )
    assert br.identity
    ids = [*sides["a"].encode(TEXTS[2]).ids_M.tolist(), sides["a"].hf.eos_token_id]
    plan = br.plan("hi", ids)
    assert plan.teacher_response_ids.tolist() == ids
    assert plan.mask_T.all()
    n = plan.num_prompt_tokens
    assert plan.row_T.tolist() == list(range(n - 1, n - 1 + len(ids)))
    assert not list(tmp_path.iterdir())  # identity needs no table


def test_end_of_turn_maps_by_role_and_paper_policy_masks_first(sides, tmp_path) -> None:  # type: ignore[no-untyped-def]
    a, b = sides["a"], sides["b"]
    br = bridge(sides, "b", "a", tmp_path)
    assert br.student_roles["end_of_turn"] == b.hf.convert_tokens_to_ids("<|im_end|>")
    eot = br.student_roles["end_of_turn"]
    think, unthink = br.student_roles["think_start"], br.student_roles["think_end"]
    ids = [think, *b.encode("Let me think.").ids_M.tolist(), unthink]
    ids += [*b.encode(" Answer: 42").ids_M.tolist(), eot, eot]
    plan = br.plan([{"role": "user", "content": "q"}], ids)
    # Markers have no teacher token: not in the teacher sequence, masked as unmapped.
    assert plan.reason_T[0] == MaskReason.SPECIAL_UNMAPPED
    assert a.hf.eos_token_id in plan.teacher_response_ids.tolist()
    assert plan.reason_T[-2] == MaskReason.SPECIAL_POLICY  # first end-of-turn
    assert plan.reason_T[-1] == MaskReason.KEPT  # the second one stays
    check_rows_end_at_starts(plan)
    # The student prompt used b's template; the teacher prompt is a's plain text.
    assert "<|im_start|>" not in a.hf.decode(plan.teacher_ids_N[: plan.num_prompt_tokens])


def test_reasoning_marker_pieces_masked_once_when_spelled_as_text(sides, tmp_path) -> None:  # type: ignore[no-untyped-def]
    text = "<think>hmm</think> ok <think>"
    ids = sides["a"].encode(text).ids_M.tolist()
    plan = bridge(sides, "a", "b", tmp_path).plan("q", ids)
    spans = plan.student_spans_T2
    masked = plan.reason_T == MaskReason.SPECIAL_POLICY
    first = (spans[:, 0] < 7) | ((spans[:, 1] > 10) & (spans[:, 0] < 18))
    assert (masked == (first & plan.aligned_T)).all()
    for policy, expect_any in (("none", False), ("all_special", True)):
        p = bridge(sides, "a", "b", tmp_path, special_policy=policy).plan("q", ids)
        assert bool((p.reason_T == MaskReason.SPECIAL_POLICY).any()) is expect_any
    p = bridge(sides, "a", "b", tmp_path, special_policy="all_special").plan("q", ids)
    assert (p.reason_T[spans[:, 0] >= 22] != MaskReason.KEPT).all()  # later markers too


def test_support_maps_rows_and_merges(sides, tmp_path) -> None:  # type: ignore[no-untyped-def]
    br = bridge(sides, "a", "b", tmp_path)
    ids = sides["a"].encode("The quick brown fox").ids_M.tolist()
    plan = br.plan("q", ids)
    N = len(plan.teacher_ids_N)
    P, K = N - plan.score_from, 4
    nxt = [*plan.teacher_ids_N[plan.score_from + 1 :].tolist(), 0]
    topk_ids_PK = np.zeros((P, K), np.int32)
    topk_ids_PK[:, 0] = nxt
    topk_ids_PK[:, 1] = nxt  # a duplicate: merged into slot 0
    topk_ids_PK[:, 2] = 10**6  # beyond the vocabulary: unmapped
    topk_ids_PK[:, 3] = sides["b"].hf.convert_tokens_to_ids("<|im_start|>")  # special, no role
    lp_PK = np.log(np.full((P, K), 0.25, np.float32))
    sup = br.support(plan, topk_ids_PK, lp_PK)
    kept = sup.mask_T
    assert sup.support_mask_TK[kept].tolist() == [[True, False, False, False]] * int(kept.sum())
    np.testing.assert_allclose(np.exp(sup.teacher_logprobs_TK[kept, 0]), 0.5, rtol=1e-6)
    a = sides["a"]
    for t in np.flatnonzero(kept):
        teacher_piece = sides["b"].piece(int(topk_ids_PK[plan.row_T[t] - plan.score_from, 0]))
        assert a.piece(int(sup.support_ids_TK[t, 0])) == teacher_piece
    assert sup.stats.mapped_mass_fraction == pytest.approx(0.5)
    assert not sup.support_mask_TK[~kept].any()
    # Rows cut off (the service returned fewer) are masked by reason, not misread.
    short = br.support(plan, topk_ids_PK[:2], lp_PK[:2])
    assert (short.reason_T[plan.row_T - plan.score_from >= 2] == MaskReason.ROW_MISSING).all()
    batch = collate([sup, short], pad_T=len(ids) + 3)
    assert batch["support_ids_BTK"].shape == (2, len(ids) + 3, K)
    assert batch["mask_BT"].dtype.is_floating_point is False and not batch["mask_BT"][:, -3:].any()
    assert set(batch) == {"support_ids_BTK", "teacher_logprobs_BTK", "support_mask_BTK", "mask_BT"}


def test_vocab_map_is_cached_on_disk_and_prefix_fallback_is_switchable(sides, tmp_path) -> None:  # type: ignore[no-untyped-def]
    exact = bridge(sides, "spm", "a", tmp_path)
    files = list((tmp_path / "align").iterdir())
    assert len(files) == 1
    again = bridge(sides, "spm", "a", tmp_path)
    assert list((tmp_path / "align").iterdir()) == files
    np.testing.assert_array_equal(exact.vocab_map.student_id_V, again.vocab_map.student_id_V)
    files[0].write_bytes(b"torn")  # a damaged cache file is rebuilt, not trusted
    rebuilt = bridge(sides, "spm", "a", tmp_path)
    np.testing.assert_array_equal(exact.vocab_map.student_id_V, rebuilt.vocab_map.student_id_V)
    fallback = bridge(sides, "spm", "a", tmp_path, prefix_fallback=True)
    assert fallback.vocab_map.mapped_fraction > exact.vocab_map.mapped_fraction
    spm, a = sides["spm"], sides["a"]
    by_bytes = np.isin(fallback.vocab_map.kind_V, [EXACT, PREFIX])
    assert (fallback.vocab_map.kind_V == PREFIX).any()
    for tid in np.flatnonzero(by_bytes):
        got, want = spm.piece(int(fallback.vocab_map.student_id_V[tid])), a.piece(int(tid))
        assert want.startswith(got) and got
    # Byte fallback pieces are never preferred over ordinary ones with the same bytes.
    t_id = a.encode("t").ids_M.tolist()
    assert exact.vocab_map.student_id_V[t_id[0]] == spm.hf.convert_tokens_to_ids("t")


def test_invalid_utf8_from_the_student_is_masked_not_misaligned(sides, tmp_path) -> None:  # type: ignore[no-untyped-def]
    a = sides["a"]
    emoji = a.encode("😀").ids_M.tolist()
    ids = a.encode("ok ").ids_M.tolist() + emoji[:1] + a.encode(" fine").ids_M.tolist()
    if len(emoji) < 2:
        pytest.fail("the test tokenizer must split the emoji across tokens")
    plan = bridge(sides, "a", "b", tmp_path).plan("q", ids)
    bad = len(a.encode("ok ").ids_M)
    assert plan.reason_T[bad] == MaskReason.INVALID_UTF8
    assert "\ufffd" in plan.response_text
    check_rows_end_at_starts(plan)


def test_lossy_teacher_raises_or_masks(sides, tmp_path) -> None:  # type: ignore[no-untyped-def]
    lower = sentencepiece_like(normalizers.Lowercase())
    ids = sides["a"].encode("The End").ids_M.tolist()
    br = TokenizerBridge(sides["a"], lower, AlignConfig(cache_dir=str(tmp_path)))
    with pytest.raises(LossyEncodingError, match=r"sentencepiece-like.*losslessly"):
        br.plan("q", ids)
    cfg = AlignConfig(cache_dir=str(tmp_path), on_lossy="mask")
    plan = TokenizerBridge(sides["a"], lower, cfg).plan("q", ids)
    assert (plan.reason_T == MaskReason.LOSSY_ENCODING).all()


def test_load_errors_name_the_tokenizer_and_problem(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TokenizerLoadError, match="no such file"):
        TokenizerSide.load(tmp_path / "missing")
    (tmp_path / "vocab.txt").write_text("x")
    with pytest.raises(TokenizerLoadError, match="unknown format"):
        TokenizerSide.load(tmp_path / "vocab.txt")
    with pytest.raises(TokenizerLoadError, match=r"neither tokenizer\.json"):
        TokenizerSide.load(tmp_path)
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf")
    with pytest.raises(TokenizerLoadError, match=r"bad\.gguf.*cannot load"):
        TokenizerSide.load(tmp_path / "bad.gguf")


def test_saved_directory_loads_like_the_service_sends_it(sides, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sides["b"].hf.save_pretrained(tmp_path / "tok")
    loaded = TokenizerSide.load(tmp_path / "tok")
    assert loaded.fingerprint == sides["b"].fingerprint
    assert loaded.render_prompt("hi") == sides["b"].render_prompt("hi")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("special_policy", "some"),
        ("on_lossy", "ignore"),
        ("reasoning_markers", ("<think>", "")),
        ("tool_markers", ["<tool_call>"]),
        ("prefix_fallback", "yes"),
        ("cache_dir", ""),
    ],
)
def test_config_validation_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"AlignConfig.{field}"):
        AlignConfig(**{field: value})  # type: ignore[arg-type]
