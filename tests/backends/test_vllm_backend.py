"""The vllm backend for real (vLLM on CPU, `.venv-vllm`) against the hf backend.

One `opd-teacher serve --backend vllm` process serves this whole module (an engine start
takes 15-35 s here): it is started by `tests/processes.py` with `.venv-vllm`'s Python and
compared, request for request, with the hf backend served in-process from the main venv.
The SIGTERM test ends that process, so it is the module's last test (pytest runs a
module's tests in file order). `make install-vllm` builds `.venv-vllm`; without it these
tests fail rather than skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from processes import free_port, start_teacher, stop

from opd_client import TeacherClient
from opd_client.types import ScoreOutput
from opd_teacher.config import BatcherConfig, HFEngineConfig, ServerConfig
from opd_teacher.engine.hf import HFEngine
from opd_teacher.server import TeacherServer

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"
MAX_TOP_K = 64


def vllm_env() -> dict[str, str]:
    """What vLLM needs on a CPU machine without a hub (ENV-NOTES.md)."""
    return {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
        "VLLM_CACHE_ROOT": str(REPO_ROOT / ".cache" / "vllm"),
    }


class VLLMTeacher:
    def __init__(self, process: subprocess.Popen[str], port: int, statuses: list[int]) -> None:
        self.process, self.port, self.statuses = process, port, statuses


@pytest.fixture(scope="module")
def vllm_teacher(tiny_teacher_dir: Path) -> Iterator[VLLMTeacher]:
    if not VLLM_PYTHON.exists():
        pytest.fail(".venv-vllm is missing: run `make install-vllm`")
    port, statuses = free_port(), []
    process = start_teacher(
        tiny_teacher_dir,
        port,
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-top-k",
        str(MAX_TOP_K),
        python=VLLM_PYTHON,
        backend="vllm",
        env=vllm_env(),
        statuses=statuses,
        timeout_s=300,
    )
    try:
        yield VLLMTeacher(process, port, statuses)
    finally:
        stop(process, timeout_s=60)


@pytest.fixture
async def vllm_client(vllm_teacher: VLLMTeacher) -> AsyncIterator[TeacherClient]:
    async with TeacherClient(f"127.0.0.1:{vllm_teacher.port}", timeout_s=120) as client:
        yield client


@contextlib.asynccontextmanager
async def serve_hf(model_dir: Path) -> AsyncIterator[TeacherClient]:
    engine = HFEngine(HFEngineConfig(model_dir=model_dir))
    config = ServerConfig(
        port=0, max_top_k=MAX_TOP_K, batcher=BatcherConfig(max_wait_ms=5, max_batch_tokens=8192)
    )
    async with (
        TeacherServer(engine, config) as server,
        TeacherClient(f"127.0.0.1:{server.port}", timeout_s=120) as client,
    ):
        yield client


@pytest.fixture
async def hf_client(tiny_teacher_dir: Path) -> AsyncIterator[TeacherClient]:
    async with serve_hf(tiny_teacher_dir) as client:
        yield client


@pytest.fixture(params=["hf", "vllm"])
async def any_client(
    request: pytest.FixtureRequest, tiny_teacher_dir: Path, vllm_teacher: VLLMTeacher
) -> AsyncIterator[TeacherClient]:
    """Each backend in turn, for the suite that must behave the same on both."""
    if request.param == "hf":
        async with serve_hf(tiny_teacher_dir) as client:
            yield client
    else:
        async with TeacherClient(f"127.0.0.1:{vllm_teacher.port}", timeout_s=120) as client:
            yield client


def _sequences(lengths: list[int], seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(7, 512, size=n).tolist() for n in lengths]


def assert_same_answer(got: ScoreOutput, want: ScoreOutput) -> None:
    """Log-probs within 1e-4; ids identical wherever the log-probs are not a near tie."""
    assert got.topk_ids_PK.shape == want.topk_ids_PK.shape
    np.testing.assert_allclose(got.topk_logprobs_PK, want.topk_logprobs_PK, atol=1e-4, rtol=0)
    assert np.all(np.diff(got.topk_logprobs_PK, axis=1) <= 0), "rows must be sorted descending"
    untied = np.ones_like(want.topk_ids_PK, dtype=bool)
    gaps = np.abs(np.diff(want.topk_logprobs_PK, axis=1)) <= 1e-4
    untied[:, :-1] &= ~gaps
    untied[:, 1:] &= ~gaps
    untied[:, -1] = False  # the K+1-th log-prob is unknown, so the last slot may be a tie
    np.testing.assert_array_equal(got.topk_ids_PK[untied], want.topk_ids_PK[untied])
    if want.token_logprobs_P is not None:
        assert got.token_logprobs_P is not None and got.token_ranks_P is not None
        assert want.token_ranks_P is not None
        np.testing.assert_allclose(got.token_logprobs_P, want.token_logprobs_P, atol=1e-4)
        assert np.isnan(got.token_logprobs_P[-1]) and got.token_ranks_P[-1] == 0
        # A rank can move by one only where two log-probs tie within float error.
        assert np.abs(got.token_ranks_P - want.token_ranks_P).max() <= 1


def test_opd_requirements_accept_what_vllm_installed() -> None:
    """opd's packages went in with --no-deps: their requirements must accept vLLM's torch."""
    check = subprocess.run(
        [str(VLLM_PYTHON), "-m", "opd_teacher.depcheck", "opd-teacher", "opd-client", "opd-protos"],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
    for absent in ("torchvision", "torchaudio", "torchcodec", "triton"):
        found = subprocess.run(
            [str(VLLM_PYTHON), "-c", f"import importlib.util as u; print(u.find_spec({absent!r}))"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert found.stdout.strip() == "None", f"{absent} must be uninstalled from .venv-vllm"


async def test_info_names_vllm_and_health_turned_serving(
    vllm_teacher: VLLMTeacher, vllm_client: TeacherClient, hf_client: TeacherClient
) -> None:
    info, hf_info = await vllm_client.get_info(), await hf_client.get_info()
    version = subprocess.run(
        [str(VLLM_PYTHON), "-c", "import importlib.metadata as m; print(m.version('vllm-cpu'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert (info.backend, info.backend_version) == ("vllm", version) == ("vllm", "0.32.0")
    assert not info.supports_extra_ids and hf_info.supports_extra_ids
    for name in ("model", "fingerprint", "vocab_size", "tokenizer_size", "tokenizer_sha256"):
        assert getattr(info, name) == getattr(hf_info, name), name
    assert info.max_top_k == MAX_TOP_K and info.max_sequence_length == 2048
    assert list(info.special_tokens) == list(hf_info.special_tokens)
    seen = vllm_teacher.statuses
    assert seen[0] == health_pb2.HealthCheckResponse.NOT_SERVING, "NOT_SERVING while loading"
    assert seen[-1] == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("top_k", [1, 32, MAX_TOP_K])
async def test_concurrent_lengths_equal_hf(
    top_k: int, vllm_client: TeacherClient, hf_client: TeacherClient
) -> None:
    sequences = _sequences([1, 2, 17, 90, 333, 700], seed=top_k)
    score_from = [0, 1, 5, 0, 300, 0]

    async def score_all(client: TeacherClient) -> list[ScoreOutput]:
        return await asyncio.gather(
            *(
                client.score(
                    ids,
                    top_k=top_k,
                    score_from=min(start, len(ids) - 1),
                    return_token_logprobs=True,
                )
                for ids, start in zip(sequences, score_from, strict=True)
            )
        )

    got, want = await score_all(vllm_client), await score_all(hf_client)
    for ids, one, other in zip(sequences, got, want, strict=True):
        assert one.num_positions == other.num_positions <= len(ids)
        assert_same_answer(one, other)


async def test_text_input_and_float16_equal_hf(
    vllm_client: TeacherClient, hf_client: TeacherClient
) -> None:
    text = "<think>12+7</think> 12+7=19. the student counts 3 4 5"
    got = await vllm_client.score(text=text, top_k=8, return_token_logprobs=True)
    want = await hf_client.score(text=text, top_k=8, return_token_logprobs=True)
    assert got.token_ids_N is not None and want.token_ids_N is not None
    np.testing.assert_array_equal(got.token_ids_N, want.token_ids_N)
    assert got.offsets_N2 is not None and want.offsets_N2 is not None
    np.testing.assert_array_equal(got.offsets_N2, want.offsets_N2)
    assert_same_answer(got, want)
    half = await vllm_client.score(text=text, top_k=8, float16=True)
    np.testing.assert_allclose(
        half.topk_logprobs_PK.astype(np.float32), want.topk_logprobs_PK, rtol=1e-3, atol=2e-3
    )


async def test_extra_ids_are_unimplemented(vllm_client: TeacherClient) -> None:
    ids = _sequences([6])[0]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await vllm_client.score(ids, top_k=4, extra_ids_NE=np.zeros((6, 2), dtype=np.int32))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert caught.value.details() == "extra_ids: this backend does not score extra ids"


BAD_INPUTS = [
    ({"token_ids": [], "top_k": 4}, "token_ids: must hold at least one id"),
    ({"text": "", "top_k": 4}, "text: must not be empty"),
    (
        {"token_ids": [5, 512], "top_k": 4},
        "token_ids: token_ids[1] = 512 is outside [0, vocab_size 512)",
    ),
    ({"token_ids": [5, 6], "top_k": 0}, "top_k: 0 is not in 1..max_top_k 64"),
    ({"token_ids": [5, 6], "top_k": 65}, "top_k: 65 is not in 1..max_top_k 64"),
    ({"token_ids": [5, 6], "top_k": 4, "score_from": 2}, "score_from: 2 is past the last row 1"),
    (
        {"token_ids": [7] * 2049, "top_k": 4},
        "token_ids: 2049 tokens exceed max_sequence_length 2048",
    ),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
async def test_bad_inputs_give_the_same_messages(
    any_client: TeacherClient, kwargs: dict[str, object], message: str
) -> None:
    client = any_client
    arguments = dict(kwargs)
    token_ids = arguments.pop("token_ids", None)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.score(token_ids, **arguments)  # type: ignore[arg-type]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == message
    # The service goes on serving after a bad request.
    assert (await client.score([5, 6, 7], top_k=2)).num_positions == 3


async def test_sigterm_answers_requests_in_flight(
    vllm_teacher: VLLMTeacher, vllm_client: TeacherClient
) -> None:
    """Last test of the module: it ends the shared vLLM process."""
    sequences = _sequences([900] * 16, seed=7)
    calls = [
        asyncio.create_task(vllm_client.score(ids, top_k=MAX_TOP_K, return_token_logprobs=True))
        for ids in sequences
    ]
    await asyncio.sleep(0.5)  # the calls reach the server and start
    assert not all(call.done() for call in calls), "requests must still be in flight"
    vllm_teacher.process.send_signal(signal.SIGTERM)
    results = await asyncio.gather(*calls)
    assert [r.num_positions for r in results] == [900] * 16
    exit_code = await asyncio.to_thread(vllm_teacher.process.wait, 60)
    assert exit_code == 0, vllm_teacher.process.stderr.read()  # type: ignore[union-attr]
