"""Small deterministic fakes for the service layers' tests.

`FakeEngine` implements `ScoringEngine` without a model: each row's log-probs are a
seeded function of the prefix, so answers are reproducible and checkable, and tests can
hold loading, delay batches, record batch sizes and inject faults.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from opd_teacher.engine.base import ScoringEngine
from opd_teacher.engine.topk import result_from_logprobs
from opd_teacher.tokenizer import TeacherTokenizer
from opd_teacher.types import EngineInfo, ScoreJob, ScoreResult, SpecialTokenInfo

FAKE_VOCAB = 64


def write_word_tokenizer(
    directory: Path, num_words: int = FAKE_VOCAB, padding_words: int = 0
) -> Path:
    """A word-level fast tokenizer ('w0'..'wN' plus specials); `padding_words` extra
    vocabulary entries make tokenizer.json as large as a test needs (e.g. > 4 MiB)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<bos>": 0, "<eos>": 1}
    for i in range(2, num_words):
        vocab[f"w{i}"] = i
    for i in range(padding_words):
        vocab[f"padding-word-{i:08d}-" + "x" * 16] = num_words + i
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<bos>", "eos_token": "<eos>"})
    )
    return directory


def fake_logprobs(token_ids_N: np.ndarray, vocab_size: int = FAKE_VOCAB) -> torch.Tensor:
    """[N, V] float32 log-probs; row p depends on the first p+1 tokens only (causal)."""
    rows = []
    for p in range(token_ids_N.shape[0]):
        seed = int(np.sum(token_ids_N[: p + 1].astype(np.int64) * (np.arange(p + 1) + 7))) % (2**31)
        gen = torch.Generator().manual_seed(seed)
        rows.append(torch.log_softmax(3 * torch.randn(vocab_size, generator=gen), -1))
    return torch.stack(rows)


class FakeEngine(ScoringEngine):
    def __init__(
        self,
        tokenizer_dir: Path,
        *,
        delay_s: float = 0.0,
        supports_extra_ids: bool = True,
        max_sequence_length: int = 512,
    ) -> None:
        self.tokenizer_dir = tokenizer_dir
        self.delay_s = delay_s
        self.supports_extra_ids = supports_extra_ids
        self.max_sequence_length = max_sequence_length
        self.load_gate = asyncio.Event()
        self.load_gate.set()
        self.score_gate = asyncio.Event()  # clear it to hold every batch inside the engine
        self.score_gate.set()
        self.batches: list[list[str]] = []  # job ids of every batch run
        self.fail_next: BaseException | None = None
        self.healthy = True
        self._tokenizer: TeacherTokenizer | None = None

    async def load(self) -> None:
        await self.load_gate.wait()
        self._tokenizer = TeacherTokenizer(self.tokenizer_dir)

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(
            model="fake",
            fingerprint="fake-fingerprint",
            backend="fake",
            backend_version="0",
            vocab_size=FAKE_VOCAB,
            max_sequence_length=self.max_sequence_length,
            supports_extra_ids=self.supports_extra_ids,
            special_tokens=(
                SpecialTokenInfo("bos", 0, "<bos>"),
                SpecialTokenInfo("eos", 1, "<eos>"),
            ),
        )

    @property
    def tokenizer(self) -> TeacherTokenizer:
        assert self._tokenizer is not None
        return self._tokenizer

    async def score(self, jobs: Sequence[ScoreJob]) -> list[ScoreResult]:
        self.batches.append([job.job_id for job in jobs])
        await self.score_gate.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        return [
            result_from_logprobs(fake_logprobs(job.token_ids_N)[job.score_from :], job)
            for job in jobs
        ]

    async def check_health(self) -> None:
        if not self.healthy:
            raise RuntimeError("fake engine marked unhealthy")

    async def shutdown(self) -> None:
        self._tokenizer = None
