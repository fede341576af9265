"""The `hf` backend: transformers on CPU or GPU, the embedded default.

It takes the batches the service's batcher forms, right-pads them (causal attention
means padding after a sequence cannot change its rows), runs one forward pass in a
worker thread so the event loop keeps answering health checks, and turns each job's
rows into top-K arrays. It knows nothing of gRPC or of clients.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import transformers

from opd_teacher.config import HFEngineConfig
from opd_teacher.engine.base import ScoringEngine
from opd_teacher.engine.topk import result_from_logprobs
from opd_teacher.tokenizer import TeacherTokenizer
from opd_teacher.types import EngineInfo, ScoreJob, ScoreResult

logger = logging.getLogger(__name__)

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
# Rows are log-softmaxed this many at a time so that a long sequence over a large
# vocabulary never holds a second full [N, V] float32 copy.
_ROW_CHUNK = 1024


def model_fingerprint(model_dir: Path, tokenizer_sha256: str) -> str:
    """sha256 over config.json, every weight file (sorted by name) and the tokenizer."""
    digest = hashlib.sha256()
    for path in sorted(model_dir.iterdir()):
        if path.name == "config.json" or path.suffix in _WEIGHT_SUFFIXES:
            digest.update(path.name.encode() + b"\0")
            with path.open("rb") as handle:
                while block := handle.read(1 << 22):
                    digest.update(block)
    digest.update(tokenizer_sha256.encode())
    return digest.hexdigest()


def _torch_dtype(config: HFEngineConfig) -> torch.dtype:
    if config.dtype == "auto":
        return torch.float32 if config.device == "cpu" else torch.bfloat16
    return getattr(torch, config.dtype)


class HFEngine(ScoringEngine):
    """Any causal LM directory that `AutoModelForCausalLM` loads without remote code."""

    def __init__(self, config: HFEngineConfig) -> None:
        self.config = config
        self._model: transformers.PreTrainedModel | None = None
        self._tokenizer: TeacherTokenizer | None = None
        self._info: EngineInfo | None = None
        # One worker: forward passes never overlap, and torch uses the cores inside one.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-engine")

    async def load(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load_sync)

    def _load_sync(self) -> None:
        model_dir = Path(self.config.model_dir)
        self._tokenizer = TeacherTokenizer(model_dir)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            model_dir,
            dtype=_torch_dtype(self.config),
            trust_remote_code=self.config.trust_remote_code,
        )
        model.to(torch.device(self.config.device)).eval()  # type: ignore[arg-type]
        self._model = model
        model_config = json.loads((model_dir / "config.json").read_text())
        max_len = int(model_config.get("max_position_embeddings") or 2048)
        output_embeddings = model.get_output_embeddings()
        assert output_embeddings is not None, "a causal LM has an output embedding"
        self._info = EngineInfo(
            model=model_dir.name,
            fingerprint=model_fingerprint(model_dir, self._tokenizer.sha256),
            backend="hf",
            backend_version=transformers.__version__,
            vocab_size=int(output_embeddings.weight.shape[0]),
            max_sequence_length=max_len,
            supports_extra_ids=True,
            special_tokens=self._tokenizer.special_tokens(),
        )
        # Warm-up: the first forward pass allocates and picks kernels.
        warm = ScoreJob("warm-up", "engine", np.zeros(4, dtype=np.int32), top_k=1)
        self._score_sync([warm])
        logger.info(
            "hf engine loaded %s on %s (vocab %d, max length %d)",
            model_dir.name,
            self.config.device,
            self._info.vocab_size,
            max_len,
        )

    @property
    def info(self) -> EngineInfo:
        if self._info is None:
            raise RuntimeError("HFEngine.info before load()")
        return self._info

    @property
    def tokenizer(self) -> TeacherTokenizer:
        if self._tokenizer is None:
            raise RuntimeError("HFEngine.tokenizer before load()")
        return self._tokenizer

    async def score(self, jobs: Sequence[ScoreJob]) -> list[ScoreResult]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._score_sync, list(jobs))

    def _score_sync(self, jobs: list[ScoreJob]) -> list[ScoreResult]:
        model = self._model
        if model is None:
            raise RuntimeError("HFEngine.score before load()")
        device = self.config.device
        lengths = [job.num_tokens for job in jobs]
        longest = max(lengths)
        input_ids_BL = torch.zeros((len(jobs), longest), dtype=torch.long)
        attention_mask_BL = torch.zeros((len(jobs), longest), dtype=torch.long)
        for row, job in enumerate(jobs):
            input_ids_BL[row, : job.num_tokens] = torch.from_numpy(job.token_ids_N.astype(np.int64))
            attention_mask_BL[row, : job.num_tokens] = 1
        padded = min(lengths) != longest
        with torch.inference_mode():
            logits_BLV = model(
                input_ids=input_ids_BL.to(device),
                attention_mask=attention_mask_BL.to(device) if padded else None,
                use_cache=False,
            ).logits
            results = []
            for row, job in enumerate(jobs):
                end = job.num_tokens
                logprobs_PV = torch.cat(
                    [
                        torch.log_softmax(logits_BLV[row, s : min(s + _ROW_CHUNK, end)].float(), -1)
                        for s in range(job.score_from, end, _ROW_CHUNK)
                    ]
                ).cpu()
                results.append(result_from_logprobs(logprobs_PV, job))
        return results

    async def check_health(self) -> None:
        if self._model is None:
            raise RuntimeError("hf engine is not loaded")

    async def shutdown(self) -> None:
        self._model = None
        self._executor.shutdown(wait=True, cancel_futures=True)
