"""UTF-8 bookkeeping: response bytes to text and back, character to byte offsets.

Why: a student's response is a byte string (the concatenated bytes of its tokens), but
a teacher tokenizer takes text. Usually the bytes are valid UTF-8 and the two are the
same thing; a sampled byte-level student can however emit a broken sequence (a lone
continuation byte, a character cut off at the end). Those runs become U+FFFD in the
text, and `ByteMap` keeps the offset correspondence so every other boundary still lines
up byte for byte. Tokenizer offsets count characters; `char_to_byte_offsets` converts.

What it does not know: tokens. It works on bytes, text and offsets only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REPLACEMENT = "\ufffd"
_REPLACEMENT_LEN = len(REPLACEMENT.encode("utf-8"))


@dataclass(frozen=True)
class ByteMap:
    """Text decoded from response bytes, with the invalid runs that were replaced.

    text: the response as a string; each maximal invalid byte run is one U+FFFD.
    invalid_runs: [start, end) byte ranges of the *response bytes* that were invalid.
    """

    text: str
    invalid_runs: tuple[tuple[int, int], ...]

    def to_text_offset(self, b: int) -> int | None:
        """Response byte offset -> byte offset in `text.encode()`; None inside a bad run."""
        shift = 0
        for start, end in self.invalid_runs:
            if b <= start:
                break
            if b < end:
                return None
            shift += (end - start) - _REPLACEMENT_LEN
        return b - shift

    def to_response_offset(self, tb: int) -> int | None:
        """Inverse of `to_text_offset`; None for an offset inside a U+FFFD."""
        shift = 0
        for start, end in self.invalid_runs:
            text_start = start - shift
            if tb <= text_start:
                break
            if tb < text_start + _REPLACEMENT_LEN:
                return None
            shift += (end - start) - _REPLACEMENT_LEN
        return tb + shift

    def in_invalid_run(self, start: int, end: int) -> bool:
        """Whether the byte range [start, end) touches an invalid run."""
        return any(start < e and s < max(end, start + 1) for s, e in self.invalid_runs)


def decode_response_bytes(data: bytes) -> ByteMap:
    """Decode `data` as UTF-8, replacing (and recording) each maximal invalid run."""
    parts: list[str] = []
    runs: list[tuple[int, int]] = []
    pos = 0
    while pos < len(data):
        try:
            parts.append(data[pos:].decode("utf-8"))
            break
        except UnicodeDecodeError as err:
            parts.append(data[pos : pos + err.start].decode("utf-8"))
            bad_start, bad_end = pos + err.start, pos + err.end
            # Merge adjacent bad bytes into one run, so one U+FFFD stands for all of them.
            if runs and runs[-1][1] == bad_start and parts[-1] == "":
                runs[-1] = (runs[-1][0], bad_end)
            else:
                runs.append((bad_start, bad_end))
                parts.append(REPLACEMENT)
            pos = bad_end
    return ByteMap(text="".join(parts), invalid_runs=tuple(runs))


def char_to_byte_offsets(text: str) -> np.ndarray:
    """[len(text) + 1] int64: byte offset in text.encode('utf-8') of each char index."""
    lengths = np.fromiter(
        (len(c.encode("utf-8", errors="surrogatepass")) for c in text),
        dtype=np.int64,
        count=len(text),
    )
    out = np.zeros(len(text) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out
