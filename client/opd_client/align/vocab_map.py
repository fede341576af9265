"""Teacher vocabulary -> student vocabulary, built once per tokenizer pair and cached.

Why: the teacher's top-K support comes back as teacher ids; the loss needs student ids.
A teacher token maps to the student token with exactly the same bytes; special tokens
map by role (never by their text); with `prefix_fallback` an unmatched token maps to
the student token that is its longest byte prefix (an approximation, off by default).
The table is one int64 array over the teacher vocabulary, saved under
`<cache_dir>/align/` keyed by both fingerprints, so it is built once per pair.
`map_topk` applies it to rows of top-K and merges teacher tokens that land on the same
student id by log-sum-exp into one slot.

What it does not know: positions. Which rows to map is decided in `bridge.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from opd_client.align.special import map_by_role
from opd_client.align.tokenizer import TokenizerSide

TABLE_VERSION = 1
# Per teacher id: how it maps.
UNMAPPED, EXACT, ROLE, PREFIX = 0, 1, 2, 3


def default_cache_dir() -> Path:
    env = os.environ.get("OPD_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "opd"


@dataclass(frozen=True)
class VocabMap:
    """student_id_V: [V_teacher] int64, -1 where unmapped; kind_V: [V_teacher] int8."""

    student_id_V: np.ndarray
    kind_V: np.ndarray

    @property
    def mapped_fraction(self) -> float:
        """Share of the teacher's vocabulary that has a student counterpart."""
        return float((self.student_id_V >= 0).mean()) if self.student_id_V.size else 0.0


def identity_map(size: int) -> VocabMap:
    return VocabMap(np.arange(size, dtype=np.int64), np.full(size, EXACT, dtype=np.int8))


def build_vocab_map(
    student: TokenizerSide,
    teacher: TokenizerSide,
    student_roles: Mapping[str, int],
    teacher_roles: Mapping[str, int],
    prefix_fallback: bool,
) -> VocabMap:
    # Student bytes -> id. Several ids can share bytes (SentencePiece `<0x41>` and `A`):
    # prefer an ordinary piece, then the lowest id. Special tokens are never targets of
    # a byte match: their text is not what they mean.
    index: dict[bytes, int] = {}
    for sid, data in enumerate(student.bytes_V):
        if not data or sid in student.special_ids:
            continue
        old = index.get(data)
        if old is None or (old in student.byte_fallback and sid not in student.byte_fallback):
            index[data] = sid
    role_ids = set(teacher_roles.values())
    out = np.full(teacher.size, -1, dtype=np.int64)
    kind = np.zeros(teacher.size, dtype=np.int8)
    for tid, data in enumerate(teacher.bytes_V):
        if tid in teacher.special_ids or tid in role_ids:
            mapped = map_by_role(tid, teacher_roles, student_roles)
            if mapped is not None:
                out[tid], kind[tid] = mapped, ROLE
                continue
            if tid in teacher.special_ids:
                continue
        exact = index.get(data) if data else None
        if exact is not None:
            out[tid], kind[tid] = exact, EXACT
        elif prefix_fallback and data:
            for k in range(len(data) - 1, 0, -1):
                prefix = index.get(data[:k])
                if prefix is not None:
                    out[tid], kind[tid] = prefix, PREFIX
                    break
    return VocabMap(out, kind)


def cached_vocab_map(
    student: TokenizerSide,
    teacher: TokenizerSide,
    student_roles: Mapping[str, int],
    teacher_roles: Mapping[str, int],
    prefix_fallback: bool,
    cache_dir: Path,
) -> VocabMap:
    """`build_vocab_map`, loaded from / saved to `<cache_dir>/align/` by content key."""
    key = hashlib.sha256(
        json.dumps(
            [
                TABLE_VERSION,
                student.fingerprint,
                teacher.fingerprint,
                sorted(student_roles.items()),
                sorted(teacher_roles.items()),
                prefix_fallback,
            ]
        ).encode()
    ).hexdigest()[:32]
    path = cache_dir / "align" / f"vocabmap-{key}.npz"
    if path.exists():
        try:
            with np.load(path) as data:
                return VocabMap(data["student_id_V"], data["kind_V"])
        except (OSError, KeyError, ValueError):
            pass  # a torn or foreign file: rebuild and overwrite it
    vmap = build_vocab_map(student, teacher, student_roles, teacher_roles, prefix_fallback)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, student_id_V=vmap.student_id_V, kind_V=vmap.kind_V)
    tmp.replace(path)  # atomic: concurrent builders write the same content
    return vmap


@dataclass(frozen=True)
class MappedRows:
    """Top-K rows mapped into the student vocabulary (R rows, K slots).

    support_ids_RK: student ids (0 in masked slots, a safe gather index);
    logprobs_RK: teacher log-probs, merged by log-sum-exp per student id (0 where masked);
    mask_RK: True for the slot that carries each distinct mapped student id;
    topk_mass_R / mapped_mass_R / prefix_mass_R: teacher probability in the K slots, in
    the mapped ones, and in the ones mapped only through the prefix fallback.
    """

    support_ids_RK: np.ndarray
    logprobs_RK: np.ndarray
    mask_RK: np.ndarray
    topk_mass_R: np.ndarray
    mapped_mass_R: np.ndarray
    prefix_mass_R: np.ndarray


def map_topk(vmap: VocabMap, topk_ids_RK: np.ndarray, topk_logprobs_RK: np.ndarray) -> MappedRows:
    ids_RK = np.asarray(topk_ids_RK, dtype=np.int64)
    lp_RK = np.asarray(topk_logprobs_RK, dtype=np.float64)
    if ids_RK.shape != lp_RK.shape or ids_RK.ndim != 2:
        raise ValueError(
            f"topk_ids and topk_logprobs must both be [R, K], got {ids_RK.shape} and {lp_RK.shape}"
        )
    V = vmap.student_id_V.shape[0]
    in_vocab = (ids_RK >= 0) & (ids_RK < V)
    safe = np.where(in_vocab, ids_RK, 0)
    sid_RK = np.where(in_vocab, vmap.student_id_V[safe], -1)
    ok_RK = (sid_RK >= 0) & np.isfinite(lp_RK)
    prefix_RK = ok_RK & (vmap.kind_V[safe] == PREFIX)
    K = ids_RK.shape[1]
    same_RKK = (sid_RK[:, :, None] == sid_RK[:, None, :]) & ok_RK[:, :, None] & ok_RK[:, None, :]
    earlier_KK = np.tril(np.ones((K, K), dtype=bool), k=-1)
    first_RK = ok_RK & ~(same_RKK & earlier_KK[None]).any(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        grouped = np.where(same_RKK, lp_RK[:, None, :], -np.inf)
        merged_RK = np.logaddexp.reduce(grouped, axis=-1)
    p_RK = np.where(np.isfinite(lp_RK), np.exp(lp_RK), 0.0)
    return MappedRows(
        support_ids_RK=np.where(first_RK, sid_RK, 0),
        logprobs_RK=np.where(first_RK, merged_RK, 0.0).astype(np.float32),
        mask_RK=first_RK,
        topk_mass_R=p_RK.sum(axis=1),
        mapped_mass_R=(p_RK * ok_RK).sum(axis=1),
        prefix_mass_R=(p_RK * prefix_RK).sum(axis=1),
    )
