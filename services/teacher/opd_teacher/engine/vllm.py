"""The `vllm` backend: vLLM's async engine in-process, the production GPU path.

Every scored sequence is one vLLM request (`max_tokens=1`, `prompt_logprobs=K`,
`logprobs=K`), so vLLM's own continuous batching and chunked prefill do the batching
(`handles_own_batching`: the service's batcher hands jobs over one by one while bounding
the work in flight and keeping fair share). Log-probs are raw (`logprobs_mode=
"raw_logprobs"`: log-softmax of the model's logits, before temperature or penalties) and
come back flat (`flat_logprobs=True`, no detokenizing) so `vllm_convert` packs them into
arrays without a Python dict per position. vLLM is imported only in `load()`, so this
module imports in an environment without vLLM; it knows nothing of gRPC or clients.

vLLM cannot score arbitrary ids at every row on its default (V1) model runner, so
`supports_extra_ids` is False and such requests get UNIMPLEMENTED from validation.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from opd_teacher.config import VLLMEngineConfig
from opd_teacher.engine.base import ScoringEngine
from opd_teacher.engine.hf import model_fingerprint
from opd_teacher.engine.vllm_convert import result_from_rows, rows_from_flat
from opd_teacher.tokenizer import TeacherTokenizer
from opd_teacher.types import EngineInfo, ScoreJob, ScoreResult

logger = logging.getLogger(__name__)


class VLLMEngine(ScoringEngine):
    """A model directory served by `vllm.v1.engine.async_llm.AsyncLLM`."""

    handles_own_batching = True

    def __init__(self, config: VLLMEngineConfig, max_top_k: int) -> None:
        self.config = config
        self.max_top_k = max_top_k
        self._engine: Any = None  # AsyncLLM once loaded
        self._sampling: Any = None  # the vllm.SamplingParams class
        self._tokenizer: TeacherTokenizer | None = None
        self._info: EngineInfo | None = None
        self._request_ids = itertools.count()
        self._running: dict[str, set[str]] = {}  # job id -> vLLM request ids

    def engine_args(self) -> dict[str, Any]:
        """Keyword arguments of vLLM's `AsyncEngineArgs` (the flags passed through)."""
        config = self.config
        return {
            "model": str(config.model_dir),
            "dtype": config.dtype,
            "tensor_parallel_size": config.tensor_parallel_size,
            "gpu_memory_utilization": config.gpu_memory_utilization,
            "max_model_len": config.max_model_len,
            "enable_prefix_caching": config.enable_prefix_caching,
            "enforce_eager": config.enforce_eager,
            "trust_remote_code": config.trust_remote_code,
            "max_logprobs": self.max_top_k,
            "logprobs_mode": "raw_logprobs",
            "disable_log_stats": True,
        }

    async def load(self) -> None:
        import vllm
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        model_dir = Path(self.config.model_dir)
        args = AsyncEngineArgs(**self.engine_args())
        # Building the engine blocks for the model load and the engine core's start: a worker
        # thread keeps the event loop (health checks, NOT_SERVING) answering meanwhile.
        self._engine = await asyncio.to_thread(AsyncLLM.from_engine_args, args)
        self._sampling = vllm.SamplingParams
        self._tokenizer = TeacherTokenizer(model_dir)
        model_config = self._engine.model_config
        vllm_tokenizer_size = len(self._engine.get_tokenizer())
        if vllm_tokenizer_size != self._tokenizer.size:
            raise RuntimeError(
                f"vLLM's tokenizer has {vllm_tokenizer_size} tokens, opd's {self._tokenizer.size}"
            )
        self._info = EngineInfo(
            model=model_dir.name,
            fingerprint=model_fingerprint(model_dir, self._tokenizer.sha256),
            backend="vllm",
            backend_version=vllm.__version__,
            vocab_size=int(model_config.get_vocab_size()),
            max_sequence_length=int(model_config.max_model_len),
            supports_extra_ids=False,
            special_tokens=self._tokenizer.special_tokens(),
        )
        # Warm-up: the first request allocates and picks kernels.
        await self._score_one(ScoreJob("warm-up", "engine", np.zeros(4, dtype=np.int32), top_k=1))
        logger.info(
            "vllm engine %s loaded %s (vocab %d, max length %d)",
            vllm.__version__,
            model_dir.name,
            self._info.vocab_size,
            self._info.max_sequence_length,
        )

    @property
    def info(self) -> EngineInfo:
        if self._info is None:
            raise RuntimeError("VLLMEngine.info before load()")
        return self._info

    @property
    def tokenizer(self) -> TeacherTokenizer:
        if self._tokenizer is None:
            raise RuntimeError("VLLMEngine.tokenizer before load()")
        return self._tokenizer

    async def score(self, jobs: Sequence[ScoreJob]) -> list[ScoreResult]:
        return list(await asyncio.gather(*(self._score_one(job) for job in jobs)))

    async def _score_one(self, job: ScoreJob) -> ScoreResult:
        if self._engine is None:
            raise RuntimeError("VLLMEngine.score before load()")
        from vllm.sampling_params import RequestOutputKind

        params = self._sampling(
            max_tokens=1,
            temperature=0.0,  # greedy: the one sampled token is never reported
            prompt_logprobs=job.top_k,
            logprobs=job.top_k,
            flat_logprobs=True,
            detokenize=False,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        # Job ids are unique per stream only, so vLLM gets its own request ids.
        request_id = f"opd-{next(self._request_ids)}"
        self._running.setdefault(job.job_id, set()).add(request_id)
        final = None
        try:
            prompt = {"prompt_token_ids": job.token_ids_N.tolist()}
            async for output in self._engine.generate(prompt, params, request_id):
                final = output
        finally:
            running = self._running.get(job.job_id)
            if running is not None:
                running.discard(request_id)
                if not running:
                    del self._running[job.job_id]
        if final is None or final.prompt_logprobs is None or not final.outputs:
            raise RuntimeError(f"vLLM returned no log-probs for request {request_id}")
        sample = final.outputs[0].logprobs
        rows = rows_from_flat(final.prompt_logprobs, sample, job.num_tokens, job.top_k)
        return result_from_rows(rows, job)

    async def abort(self, job_id: str) -> None:
        if self._engine is not None and (request_ids := self._running.get(job_id)):
            await self._engine.abort(list(request_ids))

    async def check_health(self) -> None:
        if self._engine is None:
            raise RuntimeError("vllm engine is not loaded")
        await self._engine.check_health()

    async def shutdown(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            # Stops the engine-core process; blocking, so off the event loop.
            await asyncio.to_thread(engine.shutdown)
