"""One side of the bridge: a loaded tokenizer with bytes, offsets and prompt rendering.

Why: the bridge needs the same few things from the student's and the teacher's
tokenizer: load it from a directory (as `GetTokenizer` sends it) or a `.gguf` file, know
each id's bytes, encode a response losslessly with byte offsets, render a prompt with
its own chat template (plain text when there is none), and a fingerprint that says
whether two tokenizers are the same (vocabulary and normaliser, never the name).

What it does not know: the other side. Pairing, alignment and masking are elsewhere.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from opd_client.align.errors import (
    LossyEncodingError,
    TokenizerLoadError,
    UnsupportedTokenizerError,
)
from opd_client.align.pieces import (
    byte_fallback_ids,
    prefix_free_encoder,
    token_bytes_table,
    tokenizer_spec,
)
from opd_client.align.utf8 import char_to_byte_offsets

Prompt = str | Sequence[Mapping[str, str]]


def load_hf_tokenizer(path: str | Path) -> Any:
    """A transformers fast tokenizer from a tokenizer directory or a `.gguf` file."""
    p = Path(path)
    name = str(path)
    if not p.exists():
        raise TokenizerLoadError(name, "no such file or directory")
    from transformers import AutoTokenizer

    try:
        if p.is_dir():
            if not (p / "tokenizer.json").exists() and not (p / "tokenizer_config.json").exists():
                raise TokenizerLoadError(
                    name, "directory has neither tokenizer.json nor tokenizer_config.json"
                )
            tok = AutoTokenizer.from_pretrained(str(p))
        elif p.suffix == ".gguf":
            tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
        else:
            raise TokenizerLoadError(
                name, "unknown format: expected a tokenizer directory or a .gguf file"
            )
    except TokenizerLoadError:
        raise
    except Exception as err:  # transformers raises many kinds; all mean "cannot load"
        raise TokenizerLoadError(name, f"cannot load: {type(err).__name__}: {err}") from err
    if not getattr(tok, "is_fast", False) or getattr(tok, "backend_tokenizer", None) is None:
        raise UnsupportedTokenizerError(
            name, "not a fast (tokenizers-backed) tokenizer, so it has no offsets support"
        )
    return tok


@dataclass(frozen=True)
class Encoded:
    """A text encoded by one side: ids [M] and byte spans [M, 2] into the text's bytes."""

    ids_M: np.ndarray
    spans_M2: np.ndarray


class TokenizerSide:
    """A tokenizer prepared for the bridge. Build with `TokenizerSide.load` or directly."""

    def __init__(self, hf_tokenizer: Any, name: str) -> None:
        self.name = name
        self.hf = hf_tokenizer
        backend = hf_tokenizer.backend_tokenizer
        spec = tokenizer_spec(backend)
        self.size: int = backend.get_vocab_size(with_added_tokens=True)
        self.bytes_V: list[bytes] = token_bytes_table(backend, spec, name)
        self.byte_fallback: frozenset[int] = frozenset(byte_fallback_ids(backend, spec))
        self.encoder = prefix_free_encoder(spec)
        added = spec.get("added_tokens", [])
        self.special_ids: frozenset[int] = frozenset(a["id"] for a in added if a["special"])
        self.added_ids: frozenset[int] = frozenset(a["id"] for a in added)
        self.fingerprint: str = _fingerprint(spec)

    @classmethod
    def load(cls, path: str | Path) -> TokenizerSide:
        return cls(load_hf_tokenizer(path), str(path))

    def piece(self, idx: int) -> bytes:
        return self.bytes_V[idx] if 0 <= idx < self.size else b""

    def token_str(self, idx: int) -> str:
        return self.hf.convert_ids_to_tokens(int(idx)) if 0 <= idx < self.size else ""

    def encode(self, text: str) -> Encoded:
        """Encode a response text with no special tokens and no dummy prefix, checking that
        the ids give back exactly the text's bytes and that the offsets agree with them."""
        if not text:
            return Encoded(np.zeros(0, np.int64), np.zeros((0, 2), np.int64))
        enc = self.encoder.encode(text, add_special_tokens=False)
        ids = [int(i) for i in enc.ids]
        pieces = [self.piece(i) for i in ids]
        data = text.encode("utf-8")
        ends = np.cumsum([len(p) for p in pieces], dtype=np.int64)
        if b"".join(pieces) != data:
            raise LossyEncodingError(self.name, _lossy_detail(text, pieces, data))
        starts = ends - np.array([len(p) for p in pieces], dtype=np.int64)
        c2b = char_to_byte_offsets(text)
        offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
        lo, hi = c2b[offsets[:, 0]], c2b[offsets[:, 1]]
        # Offsets count whole characters, so a token holding part of a character reports
        # the character's full span: its bytes must lie inside that span.
        bad = np.flatnonzero((starts < lo) | (ends > hi))
        if bad.size:
            j = int(bad[0])
            raise UnsupportedTokenizerError(
                self.name,
                f"offsets {tuple(offsets[j])} of token {j} ({self.token_str(ids[j])!r}) do not "
                f"cover its bytes [{starts[j]}, {ends[j]})",
            )
        return Encoded(np.asarray(ids, np.int64), np.stack([starts, ends], axis=1))

    def render_prompt(self, prompt: Prompt) -> list[int]:
        """Prompt ids with this side's chat template and a generation prompt; without a
        template, the plain text with the tokenizer's own special tokens (e.g. BOS)."""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        if self.hf.chat_template:
            text = self.hf.apply_chat_template(
                [dict(m) for m in messages], add_generation_prompt=True, tokenize=False
            )
            return list(self.hf(text, add_special_tokens=False)["input_ids"])
        text = "\n\n".join(m["content"] for m in messages)
        return list(self.hf(text, add_special_tokens=True)["input_ids"])


def _fingerprint(spec: dict[str, Any]) -> str:
    """sha256 of what decides the meaning of ids: vocabulary, added tokens, normaliser."""
    model = spec.get("model", {})
    blob = json.dumps(
        {
            "vocab": sorted(model.get("vocab", {}).items())
            if isinstance(model.get("vocab"), dict)
            else model.get("vocab"),
            "added": sorted((a["id"], a["content"], a["special"]) for a in spec["added_tokens"]),
            "normalizer": spec.get("normalizer"),
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _lossy_detail(text: str, pieces: list[bytes], data: bytes) -> str:
    got = b"".join(pieces)
    i = next((k for k, (a, b) in enumerate(zip(got, data, strict=False)) if a != b), None)
    if i is None:
        i = min(len(got), len(data))
    return (
        f"cannot encode the text losslessly: from byte {i} the text has "
        f"{data[i : i + 12]!r} but the tokens give back {got[i : i + 12]!r} "
        "(a normaliser or an unknown-token piece changes it)"
    )
