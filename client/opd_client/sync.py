"""A blocking `TeacherClient` for scripts and notebooks.

It runs the async client on an event loop in a background thread, so synchronous code
gets the same deadlines, retries and replicas without touching asyncio.

    with SyncTeacherClient("127.0.0.1:50051") as teacher:
        out = teacher.score(text="2+2=4", top_k=5)
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from opd.teacher.v1 import teacher_pb2
from opd_client.teacher import TeacherClient
from opd_client.types import ScoreOutput

T = TypeVar("T")


class SyncTeacherClient:
    def __init__(self, targets: str | list[str], **client_options: Any) -> None:
        self._client = TeacherClient(targets, **client_options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> SyncTeacherClient:
        self._thread.start()
        self._run(self._client.__aenter__())
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._run(self._client.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def get_info(self) -> teacher_pb2.TeacherInfo:
        return self._run(self._client.get_info())

    def get_tokenizer(self) -> dict[str, bytes]:
        return self._run(self._client.get_tokenizer())

    def save_tokenizer(self, directory: Path) -> Path:
        return self._run(self._client.save_tokenizer(directory))

    def score(self, token_ids: Any = None, **options: Any) -> ScoreOutput:
        return self._run(self._client.score(token_ids, **options))

    def check_health(self, service: str = "") -> bool:
        return self._run(self._client.check_health(service))

    def wait_ready(self, timeout_s: float) -> None:
        self._run(self._client.wait_ready(timeout_s))
