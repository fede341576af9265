"""The one interface every scoring backend implements.

Transports and the batcher know only this: an engine loads a model, scores a batch of
validated token-id jobs and reports its health. It knows nothing of gRPC, clients or
queues (vLLM's `EngineClient` draws the same line).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

from opd_teacher.tokenizer import TeacherTokenizer
from opd_teacher.types import EngineInfo, ScoreJob, ScoreResult


class ScoringEngine(abc.ABC):
    """A teacher model that scores token sequences.

    `load()` must finish before `score()`; `score()` may be called again while an earlier
    call runs only if `handles_own_batching` is True (vLLM's continuous batching);
    otherwise the batcher serialises calls.
    """

    handles_own_batching: bool = False

    @abc.abstractmethod
    async def load(self) -> None:
        """Loads weights and warms up; health turns SERVING only after it returns."""

    @property
    @abc.abstractmethod
    def info(self) -> EngineInfo:
        """Model name, fingerprint and limits; valid after `load()`."""

    @property
    @abc.abstractmethod
    def tokenizer(self) -> TeacherTokenizer:
        """The teacher's tokenizer; valid after `load()`."""

    @abc.abstractmethod
    async def score(self, jobs: Sequence[ScoreJob]) -> list[ScoreResult]:
        """Scores `jobs` (already validated against `info`), one result per job, in order."""

    async def abort(self, job_id: str) -> None:  # noqa: B027 - optional for batch engines
        """Stops a running job where the backend allows; batch engines finish the batch."""

    @abc.abstractmethod
    async def check_health(self) -> None:
        """Raises if the engine can no longer serve (the process should then exit)."""

    @abc.abstractmethod
    async def shutdown(self) -> None:
        """Releases the model; idempotent."""
