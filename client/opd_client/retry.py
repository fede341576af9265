"""Per-call retries with jittered exponential back-off, on transient codes only.

Only UNAVAILABLE (a replica loading, draining or gone) and RESOURCE_EXHAUSTED (a full
queue) are retried: every other code means the request itself is wrong or the deadline
is spent, and retrying would only add load. "Full jitter" spreads the retries of many
student jobs so a restarted teacher is not hit by all of them at once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import grpc

RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    """Attempts per call including the first, >= 1."""
    initial_backoff_s: float = 0.1
    """Upper bound of the first wait, > 0."""
    max_backoff_s: float = 5.0
    """Upper bound of any wait, >= initial_backoff_s."""
    multiplier: float = 2.0
    """Growth of the bound per attempt, >= 1."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts: must be >= 1")
        if self.initial_backoff_s <= 0:
            raise ValueError("initial_backoff_s: must be > 0")
        if self.max_backoff_s < self.initial_backoff_s:
            raise ValueError("max_backoff_s: must be >= initial_backoff_s")
        if self.multiplier < 1:
            raise ValueError("multiplier: must be >= 1")

    def backoff_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """Wait before retry number `attempt` (1 = the first retry): uniform in [0, bound]."""
        bound = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        return (rng or random).uniform(0, bound)


def is_retryable(error: grpc.RpcError) -> bool:
    code = error.code() if hasattr(error, "code") else None
    return code in RETRYABLE_CODES
