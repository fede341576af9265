"""`opd_gateway.support` on hand-made teacher answers: which row scores which token, the
renormalised top-K entropy, the summary, and the student log-ratio (no teacher needed)."""

from __future__ import annotations

import math

import numpy as np

from opd_client.types import ScoreOutput
from opd_gateway.support import build_support, topk_entropy_P

PIECES = [f"t{i}" for i in range(16)]


def _output(score_from: int, token_ids_N: np.ndarray, k: int = 3) -> ScoreOutput:
    rows = token_ids_N.shape[0] - score_from
    topk_ids = np.arange(rows * k, dtype=np.int32).reshape(rows, k) % 16
    topk_logprobs = -np.tile(np.arange(1, k + 1, dtype=np.float32), (rows, 1)) / 2
    token_logprobs = -(np.arange(rows, dtype=np.float32) + 0.25)
    token_logprobs[-1] = np.nan  # the contract: the last row has no next token
    ranks = np.arange(1, rows + 1, dtype=np.int32)
    ranks[-1] = 0
    return ScoreOutput("r", topk_ids, topk_logprobs, token_logprobs, ranks)


def test_row_p_scores_token_p_plus_one_after_score_from() -> None:
    ids_N = np.array([3, 4, 5, 6, 7], dtype=np.int32)
    out = _output(1, ids_N)
    tokens, after_last, summary = build_support(
        pieces=PIECES,
        out=out,
        token_ids_N=ids_N,
        starts_N=np.arange(5),
        ends_N=np.arange(1, 6),
        score_from=1,
        surprise_threshold=1.0,
    )
    assert [t["predicted"] for t in tokens] == [False, False, True, True, True]
    assert [t["token"] for t in tokens] == ["t3", "t4", "t5", "t6", "t7"]
    for i in (2, 3, 4):  # token i comes from row i - 1 - score_from
        row = i - 2
        assert tokens[i]["logprob"] == out.token_logprobs_P[row]  # type: ignore[index]
        assert tokens[i]["surprise"] == -out.token_logprobs_P[row]  # type: ignore[index]
        assert tokens[i]["rank"] == row + 1
        assert tokens[i]["top"]["ids"] == out.topk_ids_PK[row].tolist()
        assert tokens[i]["top"]["tokens"] == [PIECES[j] for j in out.topk_ids_PK[row]]
    assert after_last["ids"] == out.topk_ids_PK[-1].tolist()  # the row after the last token
    assert summary["num_predicted"] == 3
    assert math.isclose(summary["mean_surprise"], (0.25 + 1.25 + 2.25) / 3, rel_tol=1e-6)
    assert summary["above_threshold"] == 2
    assert [w["index"] for w in summary["worst"]] == [4, 3, 2]


def test_entropy_of_the_renormalised_top_k() -> None:
    uniform = np.log(np.full((1, 4), 0.01, dtype=np.float32))  # renormalised: uniform on 4
    assert math.isclose(float(topk_entropy_P(uniform)[0]), math.log(4), rel_tol=1e-6)
    peaked = np.array([[0.0, -np.inf, -np.inf]], dtype=np.float32)
    assert float(topk_entropy_P(peaked)[0]) == 0.0


def test_single_token_has_no_prediction_and_a_next_row() -> None:
    ids_N = np.array([9], dtype=np.int32)
    tokens, after_last, summary = build_support(
        pieces=PIECES,
        out=_output(0, ids_N),
        token_ids_N=ids_N,
        starts_N=np.array([0]),
        ends_N=np.array([1]),
        score_from=0,
        surprise_threshold=1.0,
    )
    assert tokens[0]["predicted"] is False and len(after_last["ids"]) == 3
    assert summary["mean_surprise"] is None and summary["worst"] == []


def test_student_logprobs_give_the_log_ratio() -> None:
    ids_N = np.array([1, 2, 3], dtype=np.int32)
    tokens, _, summary = build_support(
        pieces=PIECES,
        out=_output(0, ids_N),
        token_ids_N=ids_N,
        starts_N=np.arange(3),
        ends_N=np.arange(1, 4),
        score_from=0,
        surprise_threshold=1.0,
        student_logprobs=[None, -1.0, None],
    )
    assert tokens[0]["log_ratio"] is None and tokens[2]["log_ratio"] is None
    assert math.isclose(tokens[1]["log_ratio"], -1.0 - (-0.25), rel_tol=1e-9)
    assert math.isclose(summary["mean_log_ratio"], -0.75, rel_tol=1e-9)
