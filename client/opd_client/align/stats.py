"""Per-position mask reasons and per-batch alignment statistics.

Why: cross-tokenizer distillation silently loses signal (unaligned positions, teacher
mass that has no student token); the trainer logs these numbers every step so a user
sees how much of the teacher survives: aligned fraction, mapped teacher probability
mass, masked positions by reason.

What it does not know: how positions were aligned; it counts what `bridge.py` decided.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np


class MaskReason(IntEnum):
    """Why a student position is out of the loss (KEPT: it is in)."""

    KEPT = 0
    UNALIGNED = 1  # no teacher token boundary at the byte where the student token starts
    SPECIAL_POLICY = 2  # masked by AlignConfig.special_policy
    SPECIAL_UNMAPPED = 3  # a student special token with no teacher counterpart by role
    INVALID_UTF8 = 4  # the student's bytes there are not valid UTF-8
    LOSSY_ENCODING = 5  # the teacher cannot encode the response losslessly (on_lossy="mask")
    NO_MAPPED_SUPPORT = 6  # aligned, but none of the teacher's top-K maps to a student id
    ROW_MISSING = 7  # the teacher returned no row for it (score_from too late, truncated)


@dataclass
class AlignStats:
    """Counts and sums over positions; `merge` adds batches, properties give the means.

    positions: student response positions; aligned: those with a teacher row;
    masked: reason name -> count (KEPT excluded); rows_scored: aligned positions whose
    teacher row was mapped; topk_mass / mapped_mass / prefix_mass: summed teacher
    probability over those rows in all K slots / the mapped ones / via prefix fallback.
    """

    positions: int = 0
    aligned: int = 0
    kept: int = 0
    masked: dict[str, int] = field(default_factory=dict)
    rows_scored: int = 0
    topk_mass: float = 0.0
    mapped_mass: float = 0.0
    prefix_mass: float = 0.0

    @classmethod
    def from_reasons(cls, reason_T: np.ndarray, aligned_T: np.ndarray) -> AlignStats:
        counts = np.bincount(np.asarray(reason_T, dtype=np.int64), minlength=len(MaskReason))
        masked = {r.name.lower(): int(counts[r]) for r in MaskReason if r and counts[r]}
        return cls(
            positions=len(reason_T),
            aligned=int(np.count_nonzero(aligned_T)),
            kept=int(counts[MaskReason.KEPT]),
            masked=masked,
        )

    def merge(self, other: AlignStats) -> AlignStats:
        masked = dict(self.masked)
        for k, v in other.masked.items():
            masked[k] = masked.get(k, 0) + v
        return AlignStats(
            positions=self.positions + other.positions,
            aligned=self.aligned + other.aligned,
            kept=self.kept + other.kept,
            masked=masked,
            rows_scored=self.rows_scored + other.rows_scored,
            topk_mass=self.topk_mass + other.topk_mass,
            mapped_mass=self.mapped_mass + other.mapped_mass,
            prefix_mass=self.prefix_mass + other.prefix_mass,
        )

    @staticmethod
    def total(items: Iterable[AlignStats]) -> AlignStats:
        out = AlignStats()
        for s in items:
            out = out.merge(s)
        return out

    @property
    def aligned_fraction(self) -> float:
        return self.aligned / self.positions if self.positions else 0.0

    @property
    def kept_fraction(self) -> float:
        return self.kept / self.positions if self.positions else 0.0

    @property
    def mapped_mass_mean(self) -> float:
        """Mean teacher probability per scored row that landed on student ids."""
        return self.mapped_mass / self.rows_scored if self.rows_scored else 0.0

    @property
    def mapped_mass_fraction(self) -> float:
        """Mapped share of the teacher's top-K probability mass."""
        return self.mapped_mass / self.topk_mass if self.topk_mass > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "positions": self.positions,
            "aligned": self.aligned,
            "aligned_fraction": self.aligned_fraction,
            "kept": self.kept,
            "kept_fraction": self.kept_fraction,
            "masked_by_reason": dict(sorted(self.masked.items())),
            "rows_scored": self.rows_scored,
            "topk_mass_mean": self.topk_mass / self.rows_scored if self.rows_scored else 0.0,
            "mapped_mass_mean": self.mapped_mass_mean,
            "mapped_mass_fraction": self.mapped_mass_fraction,
            "prefix_fallback_mass_mean": (
                self.prefix_mass / self.rows_scored if self.rows_scored else 0.0
            ),
        }
