"""vLLM output → packed arrays, as a pure function on fakes shaped like vLLM 0.32's output.

The fakes are built the way vLLM's `append_logprobs_for_next_position` builds them (actual
token first with its rank, then the top-K), from full log-softmax rows, so the expected
answer is `result_from_logprobs`, the function the hf backend uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from opd_teacher.engine.topk import result_from_logprobs
from opd_teacher.engine.vllm_convert import result_from_rows, rows_from_dicts, rows_from_flat
from opd_teacher.types import ScoreJob


@dataclass
class FakeFlat:
    start_indices: list[int] = field(default_factory=list)
    end_indices: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    ranks: list[int | None] = field(default_factory=list)

    def append(self, entries: list[tuple[int, float, int]]) -> None:
        self.start_indices.append(len(self.token_ids))
        for token, logprob, rank in entries:
            self.token_ids.append(token)
            self.logprobs.append(logprob)
            self.ranks.append(rank)
        self.end_indices.append(len(self.token_ids))


@dataclass
class FakeLogprob:
    logprob: float
    rank: int | None


def _entries(row_V: torch.Tensor, actual: int, top_k: int) -> list[tuple[int, float, int]]:
    values, ids = row_V.topk(top_k)
    rank = int((row_V > row_V[actual]).sum()) + 1
    return [(actual, float(row_V[actual]), rank)] + [
        (int(i), float(v), r + 1) for r, (v, i) in enumerate(zip(values, ids, strict=True))
    ]


def _vllm_outputs(logprobs_NV: torch.Tensor, token_ids_N: np.ndarray, top_k: int):
    """(flat prompt, flat sample, dict prompt, dict sample) as vLLM would return them."""
    num_tokens = len(token_ids_N)
    flat_prompt, flat_sample = FakeFlat(), FakeFlat()
    flat_prompt.append([])  # position 0: no log-probs
    dict_prompt: list[dict[int, FakeLogprob] | None] = [None]
    for position in range(1, num_tokens + 1):
        row_V = logprobs_NV[position - 1]
        # The generated token (after all N tokens) is the greedy choice.
        actual = int(token_ids_N[position]) if position < num_tokens else int(row_V.argmax())
        entries = _entries(row_V, actual, top_k)
        as_dict = {token: FakeLogprob(lp, rank) for token, lp, rank in entries}
        if position < num_tokens:
            flat_prompt.append(entries)
            dict_prompt.append(as_dict)
        else:
            flat_sample.append(entries)
            dict_sample = [as_dict]
    return flat_prompt, flat_sample, dict_prompt, dict_sample


@pytest.mark.parametrize("num_tokens", [1, 2, 9])
@pytest.mark.parametrize("score_from", [0, "last"])
@pytest.mark.parametrize("path", ["flat", "dicts"])
def test_conversion_equals_the_full_row_reference(
    num_tokens: int, score_from: int | str, path: str
) -> None:
    generator = torch.Generator().manual_seed(num_tokens)
    vocab, top_k = 50, 6
    logprobs_NV = torch.log_softmax(3 * torch.randn(num_tokens, vocab, generator=generator), -1)
    token_ids_N = torch.randint(0, vocab, (num_tokens,), generator=generator).numpy()
    start = num_tokens - 1 if score_from == "last" else 0
    job = ScoreJob(
        "j", "c", token_ids_N.astype(np.int32), top_k, score_from=start, return_token_logprobs=True
    )
    flat_prompt, flat_sample, dict_prompt, dict_sample = _vllm_outputs(
        logprobs_NV, token_ids_N, top_k
    )
    if path == "flat":
        rows = rows_from_flat(flat_prompt, flat_sample, num_tokens, top_k)
    else:
        rows = rows_from_dicts(dict_prompt, dict_sample, token_ids_N, top_k)
    got = result_from_rows(rows, job)
    expected = result_from_logprobs(logprobs_NV[start:], job)
    np.testing.assert_array_equal(got.topk_ids_PK, expected.topk_ids_PK)
    np.testing.assert_allclose(got.topk_logprobs_PK, expected.topk_logprobs_PK, atol=1e-6)
    assert got.topk_ids_PK.dtype == np.int32 and got.topk_logprobs_PK.dtype == np.float32
    assert got.token_logprobs_P is not None and got.token_ranks_P is not None
    assert expected.token_logprobs_P is not None and expected.token_ranks_P is not None
    np.testing.assert_allclose(got.token_logprobs_P, expected.token_logprobs_P, atol=1e-6)
    np.testing.assert_array_equal(got.token_ranks_P, expected.token_ranks_P)
    assert np.isnan(got.token_logprobs_P[-1]) and got.token_ranks_P[-1] == 0


def test_wrong_entry_counts_are_refused() -> None:
    logprobs_NV = torch.log_softmax(torch.randn(3, 20), -1)
    token_ids_N = np.array([1, 2, 3])
    flat_prompt, flat_sample, _, _ = _vllm_outputs(logprobs_NV, token_ids_N, 4)
    with pytest.raises(ValueError, match="other than 6 log-probs"):
        rows_from_flat(flat_prompt, flat_sample, 3, 5)
    with pytest.raises(ValueError, match="prompt positions"):
        rows_from_flat(flat_prompt, flat_sample, 4, 4)
