"""Many score requests in flight on one `ScoreStream`, answers matched by request_id.

The teacher may answer out of order, so each request gets a future keyed by its
request_id and one reader task resolves them. Writes are serialised (a gRPC call allows
one writer at a time). If the stream breaks, every pending request fails with the
stream's status; nothing waits forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

import grpc
import numpy as np

from opd.teacher.v1 import teacher_pb2_grpc
from opd_client.types import ScoreOutput, build_request, decode_response


class ScoreStream:
    def __init__(
        self,
        stub: teacher_pb2_grpc.TeacherServiceStub,
        metadata: tuple[tuple[str, str], ...],
        timeout_s: float | None,
        score_defaults: dict[str, Any],
    ) -> None:
        self._stub = stub
        self._metadata = metadata
        self._timeout_s = timeout_s
        self._defaults = score_defaults
        self._call: Any = None
        self._pending: dict[str, asyncio.Future[ScoreOutput]] = {}
        self._write_lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count()
        self._error: BaseException | None = None

    async def __aenter__(self) -> ScoreStream:
        self._call = self._stub.ScoreStream(metadata=self._metadata, timeout=self._timeout_s)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._call is not None:
            with contextlib.suppress(grpc.RpcError, asyncio.InvalidStateError):
                async with self._write_lock:
                    await self._call.done_writing()
            if self._pending and exc_info[0] is None:
                with contextlib.suppress(BaseException):
                    await asyncio.gather(*self._pending.values())
            self._call.cancel()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._fail_pending(self._error or asyncio.CancelledError())

    async def _read(self) -> None:
        try:
            while True:
                response = await self._call.read()
                if response is grpc.aio.EOF:
                    break
                future = self._pending.pop(response.request_id, None)
                if future is not None and not future.done():
                    future.set_result(decode_response(response))
        except grpc.RpcError as error:
            self._error = error
        self._fail_pending(self._error or RuntimeError("the teacher ended the stream early"))

    def _fail_pending(self, error: BaseException) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()

    async def submit(
        self,
        token_ids: np.ndarray | list[int] | None = None,
        *,
        request_id: str | None = None,
        **options: Any,
    ) -> asyncio.Future[ScoreOutput]:
        """Sends one request; returns the future of its answer (await it later)."""
        if self._call is None:
            raise RuntimeError("ScoreStream used outside 'async with'")
        if self._error is not None:
            raise self._error
        request_id = request_id if request_id is not None else f"r{next(self._ids)}"
        if request_id in self._pending:
            raise ValueError(f"request_id {request_id!r} is already in flight on this stream")
        request = build_request(request_id, token_ids, **{**self._defaults, **options})
        future: asyncio.Future[ScoreOutput] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            async with self._write_lock:
                await self._call.write(request)
        except BaseException:
            # Nobody will await this future: cancel it rather than leave an error unread.
            self._pending.pop(request_id, None)
            future.cancel()
            raise
        return future

    async def score(
        self, token_ids: np.ndarray | list[int] | None = None, **options: Any
    ) -> ScoreOutput:
        """Sends one request and waits for its answer; many may run concurrently."""
        return await (await self.submit(token_ids, **options))
