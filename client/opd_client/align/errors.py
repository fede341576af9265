"""Errors of the tokenizer bridge.

Why: a bad tokenizer or a text that one side cannot represent must stop the caller with
a message that names the tokenizer and the problem, and the CLI turns these into a
one-line error with exit code 2. Every error here is a `ValueError`, so callers that do
not care about the kind can catch one thing.

What it does not know: how the trainer reacts (retry, mask, abort); it only describes.
"""

from __future__ import annotations


class AlignError(ValueError):
    """Base class: `tokenizer` is the tokenizer's name (path), `problem` what went wrong."""

    def __init__(self, tokenizer: str, problem: str) -> None:
        super().__init__(f"tokenizer {tokenizer!r}: {problem}")
        self.tokenizer = tokenizer
        self.problem = problem


class TokenizerLoadError(AlignError):
    """The path does not exist, or is neither a tokenizer directory nor a `.gguf` file."""


class UnsupportedTokenizerError(AlignError):
    """Loaded, but the bridge cannot work with it (no offsets, unknown piece encoding)."""


class LossyEncodingError(AlignError):
    """The tokenizer does not give back the exact bytes of the text it was given."""
