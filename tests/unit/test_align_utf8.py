"""Pure tests of the bridge's byte bookkeeping: UTF-8 decoding with invalid runs,
character -> byte offsets, and top-K mapping into the student vocabulary."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from opd_client.align.utf8 import REPLACEMENT, char_to_byte_offsets, decode_response_bytes
from opd_client.align.vocab_map import EXACT, PREFIX, UNMAPPED, VocabMap, map_topk


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_valid_utf8_round_trips_without_runs(text: str) -> None:
    data = text.encode("utf-8", errors="surrogatepass")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return  # lone surrogates are not valid UTF-8; covered by the binary test below
    bmap = decode_response_bytes(data)
    assert bmap.text == text
    assert bmap.invalid_runs == ()
    for b in range(len(data) + 1):
        assert bmap.to_text_offset(b) == b
        assert bmap.to_response_offset(b) == b


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_offsets_survive_invalid_runs(data: bytes) -> None:
    bmap = decode_response_bytes(data)
    text_bytes = bmap.text.encode("utf-8")
    assert bmap.text.count(REPLACEMENT) >= len(bmap.invalid_runs)
    for b in range(len(data) + 1):
        tb = bmap.to_text_offset(b)
        if tb is None:
            assert any(s < b < e for s, e in bmap.invalid_runs)
            continue
        assert bmap.to_response_offset(tb) == b
    # Outside the runs the bytes are the same on both sides.
    edges = [0, *(x for run in bmap.invalid_runs for x in run), len(data)]
    for start, end in zip(edges[::2], edges[1::2], strict=True):
        ts, te = bmap.to_text_offset(start), bmap.to_text_offset(end)
        assert ts is not None and te is not None
        assert text_bytes[ts:te] == data[start:end]


def test_cut_character_becomes_one_replacement() -> None:
    data = "ab😀".encode()[:-1] + b"c\xff\xfed"
    bmap = decode_response_bytes(data)
    assert bmap.text == f"ab{REPLACEMENT}c{REPLACEMENT}d"
    assert bmap.invalid_runs == ((2, 5), (6, 8))
    assert bmap.to_text_offset(5) == 5  # 3 bad bytes -> 3-byte U+FFFD
    assert bmap.to_text_offset(8) == 9  # 2 bad bytes -> 3-byte U+FFFD
    assert bmap.to_text_offset(3) is None
    assert bmap.in_invalid_run(2, 3) and not bmap.in_invalid_run(0, 2)


def test_char_to_byte_offsets() -> None:
    assert char_to_byte_offsets("aé日😀").tolist() == [0, 1, 3, 6, 10]
    assert char_to_byte_offsets("").tolist() == [0]


def _vmap(student_ids: list[int], kinds: list[int] | None = None) -> VocabMap:
    kind = kinds or [EXACT if s >= 0 else UNMAPPED for s in student_ids]
    return VocabMap(np.array(student_ids, np.int64), np.array(kind, np.int8))


def test_map_topk_merges_duplicates_by_logsumexp_and_masks_unmapped() -> None:
    vmap = _vmap([5, 5, -1, 7, 9])
    ids_RK = np.array([[0, 1, 2, 3], [4, 99, -3, 0]], np.int32)
    lp_RK = np.log(np.array([[0.4, 0.3, 0.2, 0.1], [0.5, 0.2, 0.2, 0.1]], np.float32))
    rows = map_topk(vmap, ids_RK, lp_RK)
    assert rows.mask_RK.tolist() == [[True, False, False, True], [True, False, False, True]]
    assert rows.support_ids_RK[0, [0, 3]].tolist() == [5, 7]
    np.testing.assert_allclose(np.exp(rows.logprobs_RK[0, 0]), 0.7, rtol=1e-6)
    np.testing.assert_allclose(np.exp(rows.logprobs_RK[0, 3]), 0.1, rtol=1e-6)
    np.testing.assert_allclose(rows.mapped_mass_R, [0.8, 0.6], rtol=1e-6)
    np.testing.assert_allclose(rows.topk_mass_R, [1.0, 1.0], rtol=1e-6)
    assert (rows.support_ids_RK[~rows.mask_RK] == 0).all()  # safe gather index
    assert (rows.logprobs_RK[~rows.mask_RK] == 0).all()


def test_map_topk_counts_prefix_mass_and_ignores_minus_inf() -> None:
    vmap = _vmap([1, 2], [EXACT, PREFIX])
    rows = map_topk(vmap, np.array([[0, 1, 1]]), np.array([[np.log(0.5), np.log(0.25), -np.inf]]))
    assert rows.mask_RK.tolist() == [[True, True, False]]
    np.testing.assert_allclose(rows.prefix_mass_R, [0.25])
    np.testing.assert_allclose(np.exp(rows.logprobs_RK[0, 1]), 0.25, rtol=1e-6)


def test_map_topk_rejects_mismatched_shapes() -> None:
    try:
        map_topk(_vmap([0]), np.zeros((2, 3)), np.zeros((2, 4)))
    except ValueError as err:
        assert "[R, K]" in str(err)
    else:
        raise AssertionError("shape mismatch accepted")
