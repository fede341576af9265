"""The servicer against a fake engine on a free port: the contract, errors, streams."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from fakes import FAKE_VOCAB, fake_logprobs

from opd.teacher.v1 import teacher_pb2, teacher_pb2_grpc
from opd_client import TeacherClient
from opd_client.types import build_request
from opd_protos import CONTRACT_VERSION
from opd_teacher.server import TeacherServer


async def test_get_info_reports_limits_and_tokenizer(client: TeacherClient) -> None:
    info = await client.get_info()
    assert info.backend == "fake"
    assert info.vocab_size == FAKE_VOCAB
    assert info.max_top_k == FAKE_VOCAB  # capped by the vocabulary
    assert info.contract_version == CONTRACT_VERSION
    assert {t.role for t in info.special_tokens} >= {"bos", "eos"}
    assert len(info.tokenizer_sha256) == 64 and info.tokenizer_bytes > 0


async def test_score_returns_reference_topk_and_token_logprobs(client: TeacherClient) -> None:
    ids = np.array([0, 5, 9, 12, 3], dtype=np.int32)
    out = await client.score(ids, top_k=4, return_token_logprobs=True)
    reference_NV = fake_logprobs(ids)
    expected_lp, expected_ids = reference_NV.topk(4, dim=-1)
    np.testing.assert_array_equal(out.topk_ids_PK, expected_ids.numpy())
    np.testing.assert_allclose(out.topk_logprobs_PK, expected_lp.numpy(), rtol=0, atol=1e-6)
    assert np.all(np.diff(out.topk_logprobs_PK, axis=1) <= 0), "rows sorted descending"
    assert out.token_logprobs_P is not None and out.token_ranks_P is not None
    for p in range(len(ids) - 1):
        row = reference_NV[p]
        assert out.token_logprobs_P[p] == pytest.approx(float(row[ids[p + 1]]), abs=1e-6)
        assert out.token_ranks_P[p] == int((row > row[ids[p + 1]]).sum()) + 1
    assert np.isnan(out.token_logprobs_P[-1]) and out.token_ranks_P[-1] == 0


async def test_score_from_returns_the_suffix_of_a_full_call(client: TeacherClient) -> None:
    ids = list(range(2, 20))
    full = await client.score(ids, top_k=8, return_token_logprobs=True)
    suffix = await client.score(ids, top_k=8, score_from=11, return_token_logprobs=True)
    assert suffix.num_positions == len(ids) - 11
    np.testing.assert_array_equal(suffix.topk_ids_PK, full.topk_ids_PK[11:])
    np.testing.assert_array_equal(suffix.topk_logprobs_PK, full.topk_logprobs_PK[11:])
    np.testing.assert_array_equal(suffix.token_ranks_P, full.token_ranks_P[11:])


async def test_float16_output_within_its_precision(client: TeacherClient) -> None:
    ids = [0, 4, 8, 15]
    full = await client.score(ids, top_k=6)
    half = await client.score(ids, top_k=6, float16=True)
    assert half.topk_logprobs_PK.dtype == np.float16
    np.testing.assert_allclose(half.topk_logprobs_PK, full.topk_logprobs_PK, rtol=1e-3, atol=1e-3)


async def test_extra_ids_scored_at_every_position(client: TeacherClient) -> None:
    ids = np.array([0, 7, 3, 9], dtype=np.int32)
    extra_NE = np.array([[1, 2], [3, 4], [5, 6], [63, 0]], dtype=np.int32)
    out = await client.score(ids, top_k=2, score_from=1, extra_ids_NE=extra_NE)
    reference_NV = fake_logprobs(ids)
    assert out.extra_logprobs_PE is not None
    for p in range(3):
        expected = reference_NV[p + 1, extra_NE[p + 1]].numpy()
        np.testing.assert_allclose(out.extra_logprobs_PE[p], expected, atol=1e-6)


async def test_text_input_returns_ids_and_offsets(client: TeacherClient) -> None:
    text = "w5 w7  w9 w12"
    out = await client.score(text=text, top_k=3)
    assert out.token_ids_N is not None and out.offsets_N2 is not None
    assert out.token_ids_N.tolist() == [5, 7, 9, 12]
    assert [text[s:e] for s, e in out.offsets_N2.tolist()] == ["w5", "w7", "w9", "w12"]


BAD_REQUESTS = [
    (teacher_pb2.ScoreRequest(top_k=4), "input"),
    (teacher_pb2.ScoreRequest(token_ids=teacher_pb2.TokenIds(ids=[]), top_k=4), "token_ids"),
    (teacher_pb2.ScoreRequest(text="", top_k=4), "text"),
    (teacher_pb2.ScoreRequest(token_ids=teacher_pb2.TokenIds(ids=[1, 2]), top_k=0), "top_k"),
    (teacher_pb2.ScoreRequest(token_ids=teacher_pb2.TokenIds(ids=[1, 2]), top_k=65), "top_k"),
    (teacher_pb2.ScoreRequest(token_ids=teacher_pb2.TokenIds(ids=[1, 64]), top_k=4), "vocab_size"),
    (
        teacher_pb2.ScoreRequest(token_ids=teacher_pb2.TokenIds(ids=[1, -3]), top_k=4),
        "token_ids[1]",
    ),
    (
        teacher_pb2.ScoreRequest(token_ids=teacher_pb2.TokenIds(ids=[1] * 513), top_k=4),
        "max_sequence_length",
    ),
    (
        teacher_pb2.ScoreRequest(token_ids=teacher_pb2.TokenIds(ids=[1, 2]), top_k=4, score_from=2),
        "score_from",
    ),
    (
        teacher_pb2.ScoreRequest(
            token_ids=teacher_pb2.TokenIds(ids=[1, 2]),
            top_k=4,
            extra_ids=[1, 2, 3],
            extra_per_position=2,
        ),
        "N*E",
    ),
    (
        teacher_pb2.ScoreRequest(
            token_ids=teacher_pb2.TokenIds(ids=[1, 2]), top_k=4, logprobs_dtype=7
        ),
        "logprobs_dtype",
    ),
]


@pytest.mark.parametrize(("request_", "named"), BAD_REQUESTS, ids=[n for _, n in BAD_REQUESTS])
async def test_bad_input_is_invalid_argument_and_service_keeps_serving(
    fake_server: TeacherServer, request_: teacher_pb2.ScoreRequest, named: str
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{fake_server.port}") as channel:
        stub = teacher_pb2_grpc.TeacherServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Score(request_, timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert named in caught.value.details()
        good = await stub.Score(build_request("after", [1, 2, 3], top_k=2), timeout=5)
        assert good.request_id == "after" and good.num_positions == 3


async def test_extra_ids_unimplemented_where_the_backend_lacks_them(
    start_server, word_tokenizer_dir
) -> None:
    from fakes import FakeEngine

    server = await start_server(FakeEngine(word_tokenizer_dir, supports_extra_ids=False))
    async with TeacherClient(f"127.0.0.1:{server.port}", timeout_s=5) as teacher:
        assert not (await teacher.get_info()).supports_extra_ids
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await teacher.score([1, 2], top_k=2, extra_ids_NE=np.ones((2, 1), dtype=np.int32))
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_64_concurrent_requests_on_one_stream_get_their_own_answers(
    client: TeacherClient,
) -> None:
    sequences = {f"req-{i}": [2 + (i * 7 + j) % 60 for j in range(3 + i % 11)] for i in range(64)}
    async with client.stream(top_k=3) as stream:
        futures = {rid: await stream.submit(ids, request_id=rid) for rid, ids in sequences.items()}
        answers = {rid: await future for rid, future in futures.items()}
    for rid, ids in sequences.items():
        out = answers[rid]
        assert out.request_id == rid
        expected = fake_logprobs(np.array(ids, dtype=np.int32)).topk(3, dim=-1).indices.numpy()
        np.testing.assert_array_equal(out.topk_ids_PK, expected)


async def test_a_bad_request_on_a_stream_ends_it_with_its_code(client: TeacherClient) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async with client.stream(top_k=3) as stream:
            good = await stream.submit([1, 2, 3])
            bad = await stream.submit([1, 99])
            await asyncio.gather(good, bad)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "token_ids[1]" in caught.value.details()
