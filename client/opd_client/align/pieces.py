"""The exact bytes behind every token id of a tokenizer, and a prefix-free encoder.

Why: alignment and top-K mapping compare tokens by their UTF-8 bytes, because
byte-level BPE splits one character across tokens and `decode([id])` of such a token
loses or replaces bytes. The bytes come from the tokenizer's own piece encoding:
GPT-2 byte-to-unicode for `ByteLevel` decoders, `▁`-for-space plus `<0xNN>` byte
fallback for SentencePiece-style (Metaspace / Replace) decoders. Added tokens stand for
their content. The prefix-free encoder is the tokenizer with its dummy prefix switched
off (SentencePiece's leading `▁`): a response continues a prompt, so a prefix the
tokenizer would add at the start of a document does not belong in it.

What it does not know: roles of special tokens (`special.py`), or which ids a model
really uses: ids past the tokenizer's size have no bytes.
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

from tokenizers import Tokenizer

from opd_client.align.errors import UnsupportedTokenizerError

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
SPACE_MARK = "\u2581"


@cache
def byte_level_decoder_map() -> dict[str, int]:
    """GPT-2's printable-unicode stand-in for each byte, inverted (char -> byte)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = list(printable)
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def _walk(node: Any) -> list[dict[str, Any]]:
    """A normalizer/pre-tokenizer/decoder tree flattened into its leaves."""
    if not isinstance(node, dict):
        return []
    for key in ("decoders", "pretokenizers", "normalizers"):
        if key in node:
            return [leaf for child in node[key] for leaf in _walk(child)]
    return [node]


def piece_scheme(spec: dict[str, Any], name: str) -> str:
    """'byte_level' or 'metaspace': how a vocabulary piece spells its bytes."""
    leaves = _walk(spec.get("decoder"))
    types = {leaf.get("type") for leaf in leaves}
    if "ByteLevel" in types:
        return "byte_level"
    if "Metaspace" in types or any(
        leaf.get("type") == "Replace" and leaf.get("pattern", {}).get("String") == SPACE_MARK
        for leaf in leaves
    ):
        return "metaspace"
    raise UnsupportedTokenizerError(
        name,
        f"cannot derive token bytes from decoder {sorted(str(t) for t in types) or 'none'}; "
        "supported: ByteLevel (GPT-2 style BPE) and Metaspace/Replace('▁') (SentencePiece)",
    )


def tokenizer_spec(tokenizer: Tokenizer) -> dict[str, Any]:
    """The tokenizer's full JSON description (parsed once per side: it is megabytes)."""
    spec: dict[str, Any] = json.loads(tokenizer.to_str())
    return spec


def token_bytes_table(tokenizer: Tokenizer, spec: dict[str, Any], name: str) -> list[bytes]:
    """bytes of every id in [0, vocab size incl. added tokens); b'' for holes."""
    scheme = piece_scheme(spec, name)
    byte_fallback = bool(spec.get("model", {}).get("byte_fallback"))
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    table = [b""] * size
    added = {a["id"]: a["content"] for a in spec.get("added_tokens", [])}
    char_to_byte = byte_level_decoder_map()
    for piece, idx in tokenizer.get_vocab(with_added_tokens=False).items():
        if idx >= size:
            continue
        if scheme == "byte_level":
            try:
                table[idx] = bytes(char_to_byte[c] for c in piece)
            except KeyError:
                # Not a byte-level spelling (e.g. an added piece inside the model vocab).
                table[idx] = piece.encode("utf-8")
        else:
            m = _BYTE_PIECE.fullmatch(piece) if byte_fallback else None
            table[idx] = (
                bytes([int(m.group(1), 16)])
                if m
                else piece.replace(SPACE_MARK, " ").encode("utf-8")
            )
    for idx, content in added.items():
        if idx < size:
            table[idx] = content.encode("utf-8")
    return table


def byte_fallback_ids(tokenizer: Tokenizer, spec: dict[str, Any]) -> set[int]:
    """Ids of `<0xNN>` pieces: duplicates of ordinary pieces, never preferred as targets."""
    if not spec.get("model", {}).get("byte_fallback"):
        return set()
    vocab = tokenizer.get_vocab(with_added_tokens=False)
    return {i for p, i in vocab.items() if _BYTE_PIECE.fullmatch(p)}


def _drop_prefix(node: Any) -> Any:
    """A copy of a normalizer/pre-tokenizer tree with every dummy prefix switched off."""
    if isinstance(node, list):
        return [x for x in (_drop_prefix(n) for n in node) if x is not None]
    if not isinstance(node, dict):
        return node
    kind = node.get("type")
    if kind == "Prepend":
        return None
    out = {k: _drop_prefix(v) for k, v in node.items()}
    if kind == "Metaspace":
        out["prepend_scheme"] = "never"
        if "add_prefix_space" in out:
            out["add_prefix_space"] = False
    if kind == "ByteLevel" and "add_prefix_space" in out:
        out["add_prefix_space"] = False
    return out


def prefix_free_encoder(spec: dict[str, Any]) -> Tokenizer:
    """The same tokenizer with no dummy prefix, no post-processor and no padding."""
    spec = dict(spec)
    spec["normalizer"] = _drop_prefix(spec.get("normalizer"))
    spec["pre_tokenizer"] = _drop_prefix(spec.get("pre_tokenizer"))
    spec["post_processor"] = None
    spec["padding"] = None
    spec["truncation"] = None
    return Tokenizer.from_str(json.dumps(spec))
