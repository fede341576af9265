"""The hf backend on the tiny model, through the real service: results equal a plain
`torch.log_softmax(model(ids).logits)` reference, batched or not."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from opd_client import TeacherClient
from opd_teacher.config import BatcherConfig, HFEngineConfig, ServerConfig
from opd_teacher.engine.hf import HFEngine
from opd_teacher.server import TeacherServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference_model(tiny_teacher_dir: Path) -> transformers.PreTrainedModel:
    return transformers.AutoModelForCausalLM.from_pretrained(tiny_teacher_dir).eval()


def reference_logprobs(model: transformers.PreTrainedModel, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    return torch.log_softmax(logits.float(), dim=-1)


@pytest.fixture
async def hf_client(tiny_teacher_dir: Path) -> AsyncIterator[tuple[TeacherServer, TeacherClient]]:
    engine = HFEngine(HFEngineConfig(model_dir=tiny_teacher_dir))
    config = ServerConfig(port=0, batcher=BatcherConfig(max_wait_ms=20, max_batch_tokens=8192))
    async with (
        TeacherServer(engine, config) as server,
        TeacherClient(f"127.0.0.1:{server.port}", timeout_s=60) as client,
    ):
        yield server, client


def _sequences(count: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(7, 512, size=int(rng.integers(2, 90))).tolist() for _ in range(count)]


async def test_batched_and_unbatched_equal_the_reference(
    hf_client: tuple[TeacherServer, TeacherClient], reference_model
) -> None:
    server, client = hf_client
    sequences = _sequences(12)
    alone = [await client.score(ids, top_k=16, return_token_logprobs=True) for ids in sequences]
    together = await asyncio.gather(
        *(client.score(ids, top_k=16, return_token_logprobs=True) for ids in sequences)
    )
    batch_count = server.metrics.registry.get_sample_value("opd_teacher_batch_sequences_count")
    batch_sum = server.metrics.registry.get_sample_value("opd_teacher_batch_sequences_sum")
    assert batch_sum is not None and batch_count is not None and batch_sum > batch_count, (
        "the concurrent calls must have been padded into shared batches"
    )
    for ids, one, many in zip(sequences, alone, together, strict=True):
        reference_NV = reference_logprobs(reference_model, ids)
        expected_lp, expected_ids = reference_NV.topk(16, dim=-1)
        for out in (one, many):
            np.testing.assert_allclose(out.topk_logprobs_PK, expected_lp.numpy(), atol=1e-5, rtol=0)
            # Ids must agree wherever the log-probs are not a near tie.
            gaps = np.abs(np.diff(expected_lp.numpy(), axis=1)) > 1e-4
            same = out.topk_ids_PK == expected_ids.numpy()
            assert np.all(same[:, :-1] | ~gaps), "top-K ids differ from the reference"
            next_ids = torch.tensor(ids[1:])
            actual = reference_NV[:-1].gather(1, next_ids[:, None])[:, 0]
            np.testing.assert_allclose(out.token_logprobs_P[:-1], actual.numpy(), atol=1e-5)
            ranks = (reference_NV[:-1] > actual[:, None]).sum(1) + 1
            # A rank can move by one only where two log-probs tie within float error.
            assert np.abs(out.token_ranks_P[:-1] - ranks.numpy()).max() <= 1
            assert np.isnan(out.token_logprobs_P[-1]) and out.token_ranks_P[-1] == 0


async def test_float16_extra_ids_and_score_from(
    hf_client: tuple[TeacherServer, TeacherClient], reference_model
) -> None:
    _, client = hf_client
    ids = _sequences(1, seed=3)[0]
    reference_NV = reference_logprobs(reference_model, ids)
    half = await client.score(ids, top_k=8, float16=True)
    np.testing.assert_allclose(
        half.topk_logprobs_PK.astype(np.float32),
        reference_NV.topk(8, dim=-1).values.numpy(),
        rtol=1e-3,
        atol=2e-3,
    )
    extra_NE = np.random.default_rng(1).integers(0, 512, size=(len(ids), 5)).astype(np.int32)
    suffix = await client.score(ids, top_k=8, score_from=len(ids) // 2, extra_ids_NE=extra_NE)
    start = len(ids) // 2
    expected = reference_NV[start:].gather(1, torch.from_numpy(extra_NE[start:]).long())
    np.testing.assert_allclose(suffix.extra_logprobs_PE, expected.numpy(), atol=1e-5)
    full = await client.score(ids, top_k=8)
    np.testing.assert_allclose(suffix.topk_logprobs_PK, full.topk_logprobs_PK[start:], atol=1e-5)


async def test_text_offsets_reconstruct_the_text(
    hf_client: tuple[TeacherServer, TeacherClient],
) -> None:
    _, client = hf_client
    text = "<think>12+7</think> 12+7=19. the student counts 3 4 5"
    out = await client.score(text=text, top_k=4)
    assert out.offsets_N2 is not None and out.token_ids_N is not None
    assert "".join(text[s:e] for s, e in out.offsets_N2.tolist()) == text
    assert out.num_positions == len(out.token_ids_N)
    info = await client.get_info()
    roles = {t.role: t.text for t in info.special_tokens}
    assert roles["think_start"] == "<think>" and roles["eos"] == "<|eos|>"
    assert roles["end_of_turn"] == "<|im_end|>"
    assert info.backend == "hf" and len(info.fingerprint) == 64
