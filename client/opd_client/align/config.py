"""Configuration of the tokenizer bridge (`AlignConfig`), part of the trainer config.

Why: every choice the bridge makes that changes the training signal (which special
tokens are masked, whether unmatched teacher tokens fall back to a prefix match, what
to do with a text the teacher cannot encode) lives in one validated dataclass, so a
run's config says exactly what alignment it used.

What it does not know: the tokenizers themselves; roles are found in `special.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SpecialPolicy = Literal["paper", "all_special", "none"]
LossyPolicy = Literal["error", "mask"]

_POLICIES = ("paper", "all_special", "none")
_LOSSY = ("error", "mask")


@dataclass(frozen=True)
class AlignConfig:
    """How student and teacher tokenizations are bridged.

    special_policy: which student positions are masked for special tokens.
        "paper" (default): per response, the first occurrence of each reasoning marker
        (`reasoning_markers`, as a token or spelled in pieces) and the first end-of-turn
        token, as in Fu et al. 2026; "all_special": every special-token position and
        every occurrence of a reasoning or tool-call marker; "none": nothing.
    reasoning_markers: texts of the reasoning markers, e.g. ("<think>", "</think>").
        The first two give the roles think_start and think_end. Non-empty strings.
    tool_markers: texts of the tool-call markers (roles tool_call_start, tool_call_end).
    prefix_fallback: off by default. When on, a teacher top-K token with no student
        token of exactly its bytes is mapped to the student token that is the longest
        byte prefix of it (its mass then goes to a shorter continuation: an
        approximation, counted separately in the statistics).
    on_lossy: "error" (default) raises `LossyEncodingError` when the teacher's tokenizer
        cannot give back the exact bytes of a response; "mask" masks that response.
    cache_dir: directory for the vocabulary-map cache; None means $OPD_CACHE_DIR, else
        ~/.cache/opd. The table lives under `<cache_dir>/align/`.
    """

    special_policy: SpecialPolicy = "paper"
    reasoning_markers: tuple[str, ...] = ("<think>", "</think>")
    tool_markers: tuple[str, ...] = ("<tool_call>", "</tool_call>")
    prefix_fallback: bool = False
    on_lossy: LossyPolicy = "error"
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.special_policy not in _POLICIES:
            raise ValueError(
                f"AlignConfig.special_policy must be one of {_POLICIES}, "
                f"got {self.special_policy!r}"
            )
        if self.on_lossy not in _LOSSY:
            raise ValueError(f"AlignConfig.on_lossy must be one of {_LOSSY}, got {self.on_lossy!r}")
        for name in ("reasoning_markers", "tool_markers"):
            markers = getattr(self, name)
            if not isinstance(markers, tuple) or not all(isinstance(m, str) and m for m in markers):
                raise ValueError(f"AlignConfig.{name} must be a tuple of non-empty strings")
        if not isinstance(self.prefix_fallback, bool):
            raise ValueError("AlignConfig.prefix_fallback must be a bool")
        if self.cache_dir is not None and not self.cache_dir:
            raise ValueError("AlignConfig.cache_dir must be None or a non-empty path")
