"""The gRPC transport: converts between the contract and the domain, nothing more.

It validates requests (`validation.py`), hands jobs to the batcher, packs results into
the contract's byte arrays, and maps the typed errors of `errors.py` to status codes.
It never touches the model: the engine sits behind the batcher.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import numpy as np

from opd.teacher.v1 import teacher_pb2, teacher_pb2_grpc
from opd_protos import CLIENT_METADATA_KEY, CONTRACT_VERSION, TOKENIZER_CHUNK_BYTES, pack_array
from opd_teacher.batcher import Batcher
from opd_teacher.engine.base import ScoringEngine
from opd_teacher.errors import OpdError, UnavailableError, ValidationError
from opd_teacher.metrics import ServiceMetrics
from opd_teacher.tokenizer import EncodedText
from opd_teacher.types import ScoreJob, ScoreResult
from opd_teacher.validation import Limits, validate_request

logger = logging.getLogger(__name__)


@dataclass
class Lifecycle:
    """What the servicer needs to know of the process lifecycle (set by server.py)."""

    ready: bool = False
    draining: bool = False

    def check_accepting(self) -> None:
        if self.draining:
            raise UnavailableError("the teacher is draining; retry on another replica")
        if not self.ready:
            raise UnavailableError("the teacher model is still loading")


def client_name(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == CLIENT_METADATA_KEY and value:
            return str(value)
    return str(context.peer())


def build_response(
    job: ScoreJob,
    result: ScoreResult,
    dtype: int,
    encoded: EncodedText | None,
) -> teacher_pb2.ScoreResponse:
    wire_dtype = teacher_pb2.FLOAT16 if dtype == teacher_pb2.FLOAT16 else teacher_pb2.FLOAT32
    response = teacher_pb2.ScoreResponse(
        request_id=job.job_id,
        num_positions=job.num_positions,
        k=job.top_k,
        logprobs_dtype=wire_dtype,
        topk_ids=pack_array(result.topk_ids_PK, np.int32),
        topk_logprobs=pack_array(
            result.topk_logprobs_PK, np.float16 if wire_dtype == teacher_pb2.FLOAT16 else np.float32
        ),
    )
    if result.token_logprobs_P is not None and result.token_ranks_P is not None:
        response.token_logprobs = pack_array(result.token_logprobs_P, np.float32)
        response.token_ranks = pack_array(result.token_ranks_P, np.int32)
    if result.extra_logprobs_PE is not None:
        response.extra_logprobs = pack_array(result.extra_logprobs_PE, np.float32)
    if encoded is not None:
        response.token_ids = pack_array(encoded.token_ids_N, np.int32)
        response.offsets = pack_array(encoded.offsets_N2, np.int32)
    return response


class TeacherServicer(teacher_pb2_grpc.TeacherServiceServicer):
    def __init__(
        self,
        engine: ScoringEngine,
        batcher: Batcher,
        metrics: ServiceMetrics,
        lifecycle: Lifecycle,
        max_top_k: int,
        max_stream_inflight: int,
    ) -> None:
        self.engine = engine
        self.batcher = batcher
        self.metrics = metrics
        self.lifecycle = lifecycle
        self.max_top_k = max_top_k
        self.max_stream_inflight = max_stream_inflight

    async def GetInfo(
        self, request: teacher_pb2.GetInfoRequest, context: grpc.aio.ServicerContext
    ) -> teacher_pb2.TeacherInfo:
        try:
            self.lifecycle.check_accepting()
        except OpdError as error:
            await context.abort(error.code, str(error))
        info, tokenizer = self.engine.info, self.engine.tokenizer
        return teacher_pb2.TeacherInfo(
            model=info.model,
            fingerprint=info.fingerprint,
            backend=info.backend,
            backend_version=info.backend_version,
            vocab_size=info.vocab_size,
            tokenizer_size=tokenizer.size,
            max_top_k=Limits.of(info, self.max_top_k).max_top_k,
            max_sequence_length=info.max_sequence_length,
            supports_extra_ids=info.supports_extra_ids,
            special_tokens=[
                teacher_pb2.SpecialToken(role=t.role, id=t.id, text=t.text)
                for t in info.special_tokens
            ],
            tokenizer_sha256=tokenizer.sha256,
            tokenizer_bytes=tokenizer.total_bytes,
            contract_version=CONTRACT_VERSION,
        )

    async def GetTokenizer(
        self, request: teacher_pb2.GetTokenizerRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[teacher_pb2.TokenizerChunk]:
        try:
            self.lifecycle.check_accepting()
        except OpdError as error:
            await context.abort(error.code, str(error))
        for name, data in self.engine.tokenizer.files:
            for start in range(0, max(len(data), 1), TOKENIZER_CHUNK_BYTES):
                yield teacher_pb2.TokenizerChunk(
                    file_name=name, data=data[start : start + TOKENIZER_CHUNK_BYTES]
                )

    async def Score(
        self, request: teacher_pb2.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> teacher_pb2.ScoreResponse:
        client = client_name(context)
        try:
            return await self._score_one(request, context, client, "Score")
        except OpdError as error:
            await context.abort(error.code, str(error))
        except Exception as error:
            logger.exception("Score failed for client %s", client)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {error!r}")
        raise AssertionError("unreachable: abort raises")

    async def ScoreStream(
        self,
        request_iterator: AsyncIterator[teacher_pb2.ScoreRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[teacher_pb2.ScoreResponse]:
        client = client_name(context)
        answers: asyncio.Queue[teacher_pb2.ScoreResponse | BaseException | None] = asyncio.Queue()
        # Bounds this stream's work in flight; past it the reader stops reading and HTTP/2
        # flow control pushes back on the client instead of the queue filling up.
        slots = asyncio.Semaphore(self.max_stream_inflight)
        in_flight: set[str] = set()
        tasks: set[asyncio.Task[None]] = set()

        async def answer(request: teacher_pb2.ScoreRequest) -> None:
            try:
                await answers.put(await self._score_one(request, context, client, "ScoreStream"))
            except BaseException as error:
                await answers.put(error)
            finally:
                slots.release()

        async def read_requests() -> None:
            try:
                async for request in request_iterator:
                    await slots.acquire()
                    if request.request_id in in_flight:
                        slots.release()
                        error = ValidationError(
                            "request_id",
                            f"{request.request_id!r} is already in flight on this stream",
                        )
                        await answers.put(error)
                        return
                    in_flight.add(request.request_id)
                    task = asyncio.create_task(answer(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            except BaseException as error:
                await answers.put(error)
                return
            await answers.put(None)

        reader = asyncio.create_task(read_requests())
        input_done = False
        try:
            while not (input_done and not in_flight):
                item = await answers.get()
                if item is None:
                    input_done = True
                elif isinstance(item, OpdError):
                    await context.abort(item.code, str(item))
                elif isinstance(item, asyncio.CancelledError):
                    return
                elif isinstance(item, BaseException):
                    logger.error("ScoreStream failed for client %s", client, exc_info=item)
                    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {item!r}")
                else:
                    in_flight.discard(item.request_id)
                    yield item
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    async def _score_one(
        self,
        request: teacher_pb2.ScoreRequest,
        context: grpc.aio.ServicerContext,
        client: str,
        method: str,
    ) -> teacher_pb2.ScoreResponse:
        started = time.monotonic()
        code = grpc.StatusCode.OK
        try:
            self.lifecycle.check_accepting()
            remaining = context.time_remaining()
            deadline = None if remaining is None else started + remaining
            limits = Limits.of(self.engine.info, self.max_top_k)
            job, encoded = validate_request(
                request, limits, self.engine.tokenizer, client, deadline
            )
            result = await self.batcher.submit(job)
            self.metrics.scored_positions.labels(client).inc(job.num_positions)
            return build_response(job, result, request.logprobs_dtype, encoded)
        except OpdError as error:
            code = error.code
            raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            raise
        finally:
            self.metrics.requests.labels(method, code.name, client).inc()
            self.metrics.request_latency.labels(method).observe(time.monotonic() - started)
