"""Special tokens: roles on each side, and which student positions to mask for them.

Why: special tokens are where student and teacher disagree most (the paper's −19 and
−58 log-prob penalties on `<think>` and end-of-sequence). Ids mean nothing across
tokenizers, so special tokens are matched by role (bos, eos, pad, end_of_turn,
think_start/think_end, tool_call_start/tool_call_end), found from each tokenizer's own
special-token table and chat template; then a masking policy decides which student
positions the loss ignores ("paper", "all_special", "none": see `AlignConfig`).

What it does not know: the teacher's rows. It works on ids, bytes and the config.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from opd_client.align.config import AlignConfig
from opd_client.align.tokenizer import TokenizerSide

# When one id has several roles, the first of these decides its counterpart.
ROLE_PRIORITY = (
    "end_of_turn",
    "eos",
    "think_start",
    "think_end",
    "tool_call_start",
    "tool_call_end",
    "bos",
    "pad",
    "unk",
)
_SENTINEL = "OPDALIGNREPLYSENTINEL"


def _single_token(side: TokenizerSide, text: str) -> int | None:
    """The id whose bytes are exactly `text`, preferring added tokens."""
    data = text.encode("utf-8")
    hits = [i for i, b in enumerate(side.bytes_V) if b == data]
    added = [i for i in hits if i in side.added_ids]
    best = added or hits
    return best[0] if best else None


def _end_of_turn(side: TokenizerSide) -> int | None:
    """The first added token the chat template puts after an assistant message."""
    if not side.hf.chat_template:
        return None
    messages = [{"role": "user", "content": "u"}, {"role": "assistant", "content": _SENTINEL}]
    try:
        text = side.hf.apply_chat_template(messages, tokenize=False)
    except Exception:  # a template may reject this minimal conversation; then use eos
        return None
    _, _, after = str(text).partition(_SENTINEL)
    for idx in side.hf(after, add_special_tokens=False)["input_ids"]:
        if idx in side.added_ids:
            return int(idx)
    return None


def find_roles(side: TokenizerSide, config: AlignConfig) -> dict[str, int]:
    """role -> id for one tokenizer (roles it lacks are absent)."""
    roles: dict[str, int] = {}
    for role in ("bos", "eos", "pad", "unk"):
        idx = getattr(side.hf, f"{role}_token_id", None)
        if isinstance(idx, int):
            roles[role] = idx
    eot = _end_of_turn(side)
    if eot is not None:
        roles["end_of_turn"] = eot
    elif "eos" in roles:
        roles["end_of_turn"] = roles["eos"]
    names = ("think_start", "think_end")
    for role, text in zip(names, config.reasoning_markers[:2], strict=False):
        found = _single_token(side, text)
        if found is not None:
            roles[role] = found
    names = ("tool_call_start", "tool_call_end")
    for role, text in zip(names, config.tool_markers[:2], strict=False):
        found = _single_token(side, text)
        if found is not None:
            roles[role] = found
    return roles


def role_of(idx: int, roles: Mapping[str, int]) -> str | None:
    """The highest-priority role of `idx`, if it has one."""
    return next((r for r in ROLE_PRIORITY if roles.get(r) == idx), None)


def map_by_role(idx: int, src: Mapping[str, int], dst: Mapping[str, int]) -> int | None:
    """The id on the other side that has the same role as `idx`, trying each role it has."""
    for role in ROLE_PRIORITY:
        if src.get(role) == idx and role in dst:
            return dst[role]
    return None


def _find_all(data: bytes, needle: bytes) -> list[int]:
    out, pos = [], data.find(needle)
    while pos >= 0:
        out.append(pos)
        pos = data.find(needle, pos + 1)
    return out


def policy_mask(
    ids_T: Sequence[int],
    spans_T2: np.ndarray,
    response: bytes,
    side: TokenizerSide,
    roles: Mapping[str, int],
    config: AlignConfig,
) -> np.ndarray:
    """[T] bool: True where the special-token policy masks a student position.

    ids_T: the student's response ids; spans_T2: their [start, end) byte spans in
    `response` (zero-width for special tokens, which have no text).
    """
    T = len(ids_T)
    out_T = np.zeros(T, dtype=bool)
    if config.special_policy == "none" or T == 0:
        return out_T
    ids = np.asarray(ids_T, dtype=np.int64)
    starts, ends = spans_T2[:, 0], spans_T2[:, 1]

    def overlapping(s: int, e: int) -> np.ndarray:
        return (starts < e) & (ends > s)

    marker_roles = dict(zip(("think_start", "think_end"), config.reasoning_markers, strict=False))
    if config.special_policy == "all_special":
        role_ids = set(roles.values())
        out_T |= np.isin(ids, sorted(side.special_ids | role_ids))
        for marker in config.reasoning_markers + config.tool_markers:
            for s in _find_all(response, marker.encode("utf-8")):
                out_T |= overlapping(s, s + len(marker.encode("utf-8")))
        return out_T
    # "paper": the first occurrence of each reasoning marker, as a token or in pieces.
    for marker in config.reasoning_markers:
        data = marker.encode("utf-8")
        role = next((r for r, m in marker_roles.items() if m == marker), None)
        token_id = roles.get(role) if role else None
        token_pos = np.flatnonzero(ids == token_id) if token_id is not None else np.zeros(0, int)
        byte_pos = response.find(data)
        first_tok = int(token_pos[0]) if token_pos.size else None
        if byte_pos >= 0 and (first_tok is None or byte_pos < int(starts[first_tok])):
            out_T |= overlapping(byte_pos, byte_pos + len(data))
        elif first_tok is not None:
            out_T[first_tok] = True
    eot_ids = [roles[r] for r in ("end_of_turn", "eos") if r in roles]
    eot_pos = np.flatnonzero(np.isin(ids, eot_ids)) if eot_ids else np.zeros(0, int)
    if eot_pos.size:
        out_T[int(eot_pos[0])] = True
    return out_T
