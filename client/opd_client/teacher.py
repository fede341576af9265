"""`TeacherClient`: the one owner of deadlines, retries, replicas and auth for callers.

The trainer, the gateway and the CLI all reach a teacher through this class, so every
call gets the same deadline, the same back-off on UNAVAILABLE/RESOURCE_EXHAUSTED only,
the same client name in `x-opd-client` and the same token. It knows the contract and
gRPC, not torch: the gateway imports it without pulling in a model library.

    async with TeacherClient("127.0.0.1:50051") as teacher:
        out = await teacher.score(token_ids, top_k=32)
        out.topk_ids_PK, out.topk_logprobs_PK
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from opd.teacher.v1 import teacher_pb2, teacher_pb2_grpc
from opd_client.balancing import Replicas
from opd_client.retry import RetryPolicy, is_retryable
from opd_client.stream import ScoreStream
from opd_client.types import ScoreOutput, build_request, decode_response
from opd_protos import CLIENT_METADATA_KEY, tokenizer_digest
from opd_protos.names import DEFAULT_MAX_MESSAGE_BYTES

logger = logging.getLogger(__name__)

T = TypeVar("T")


class TokenizerMismatchError(RuntimeError):
    """The reassembled tokenizer files do not match the teacher's advertised sha256."""


class TeacherClient:
    """Async client of one teacher (one or several replicas).

    targets: "host:port", "a:1,b:2", a list of those, or "dns:///name:port".
    timeout_s: deadline of each call, retries included.
    """

    def __init__(
        self,
        targets: str | Sequence[str],
        *,
        timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
        client_name: str | None = None,
        auth_token: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s: must be > 0")
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self.client_name = client_name or f"{socket.gethostname()}"
        self._auth_token = auth_token
        self._targets = targets
        self._max_message_bytes = max_message_bytes
        self._replicas: Replicas | None = None
        self._ids = itertools.count()

    async def __aenter__(self) -> TeacherClient:
        self._replicas = Replicas(self._targets, self._max_message_bytes)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._replicas is not None:
            await self._replicas.close()
            self._replicas = None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        pairs = [(CLIENT_METADATA_KEY, self.client_name)]
        if self._auth_token:
            pairs.append(("authorization", f"Bearer {self._auth_token}"))
        return tuple(pairs)

    def _stub(self) -> teacher_pb2_grpc.TeacherServiceStub:
        if self._replicas is None:
            raise RuntimeError("TeacherClient used outside 'async with'")
        return self._replicas.next_stub()

    async def _call(self, make_call: Callable[[float], Awaitable[T]]) -> T:
        """Runs `make_call(timeout)` with retries, all within one deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - loop.time()
            try:
                return await make_call(max(remaining, 0.001))
            except grpc.RpcError as error:
                wait = self.retry.backoff_s(attempt)
                last = attempt >= self.retry.max_attempts or loop.time() + wait >= deadline
                if not is_retryable(error) or last:
                    raise
                logger.debug("retrying after %s in %.3f s", error.code(), wait)
                await asyncio.sleep(wait)

    async def get_info(self) -> teacher_pb2.TeacherInfo:
        return await self._call(
            lambda timeout: self._stub().GetInfo(
                teacher_pb2.GetInfoRequest(), timeout=timeout, metadata=self.metadata
            )
        )

    async def get_tokenizer(self) -> dict[str, bytes]:
        """The teacher's tokenizer files, reassembled and verified against GetInfo's sha256."""
        info = await self.get_info()

        async def fetch(timeout: float) -> dict[str, bytes]:
            files: dict[str, bytearray] = {}
            call = self._stub().GetTokenizer(
                teacher_pb2.GetTokenizerRequest(), timeout=timeout, metadata=self.metadata
            )
            async for chunk in call:
                files.setdefault(chunk.file_name, bytearray()).extend(chunk.data)
            return {name: bytes(data) for name, data in files.items()}

        files = await self._call(fetch)
        digest = tokenizer_digest(files.items())
        if digest != info.tokenizer_sha256:
            raise TokenizerMismatchError(
                f"tokenizer files hash to {digest}, the teacher advertises {info.tokenizer_sha256}"
            )
        return files

    async def save_tokenizer(self, directory: Path) -> Path:
        """Writes the verified tokenizer files into `directory` (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in (await self.get_tokenizer()).items():
            (directory / Path(name).name).write_bytes(data)
        return directory

    async def score(
        self,
        token_ids: np.ndarray | list[int] | None = None,
        *,
        text: str | None = None,
        top_k: int = 32,
        score_from: int = 0,
        float16: bool = False,
        return_token_logprobs: bool = False,
        extra_ids_NE: np.ndarray | None = None,
    ) -> ScoreOutput:
        request = build_request(
            f"{self.client_name}-{next(self._ids)}",
            token_ids,
            text=text,
            top_k=top_k,
            score_from=score_from,
            float16=float16,
            return_token_logprobs=return_token_logprobs,
            extra_ids_NE=extra_ids_NE,
        )
        response = await self._call(
            lambda timeout: self._stub().Score(request, timeout=timeout, metadata=self.metadata)
        )
        return decode_response(response)

    def stream(self, **score_defaults: Any) -> ScoreStream:
        """One ScoreStream with many requests in flight: `async with client.stream() as s`.

        The stream has no per-call retries (a broken stream fails its pending requests);
        callers that need to survive a teacher restart resubmit on a new stream.
        """
        return ScoreStream(self._stub(), self.metadata, self.timeout_s, score_defaults)

    async def check_health(self, service: str = "") -> bool:
        """True when every replica reports SERVING for `service` ('' = readiness)."""
        if self._replicas is None:
            raise RuntimeError("TeacherClient used outside 'async with'")
        for channel in self._replicas.channels:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = await stub.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=self.timeout_s
                )
            except grpc.RpcError:
                return False
            if reply.status != health_pb2.HealthCheckResponse.SERVING:
                return False
        return True

    async def wait_ready(self, timeout_s: float) -> None:
        """Polls readiness until SERVING; raises TimeoutError after `timeout_s`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not await self.check_health():
            if loop.time() >= deadline:
                raise TimeoutError(f"teacher {self._targets} not ready after {timeout_s:.0f} s")
            await asyncio.sleep(0.2)
