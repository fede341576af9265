"""The tokenizer bridge: student response -> teacher ids, teacher rows -> student support.

Why: the trainer samples a response in the student's tokens, but the teacher scores
its own tokens. `TokenizerBridge.plan` renders the prompt with the teacher's template,
re-tokenizes the response text for the teacher (identity when both tokenizers are the
same) and records, for each student position t, the teacher row that predicts the
token starting at y_t's first byte: the row of the teacher token that ends exactly at
that byte (the last prompt token for byte 0). `support` then maps that row's top-K into
student ids and produces the four `SupportBatch` arrays (DESIGN.md §1).

What it does not know: the teacher service or the loss. It takes the rows as numpy
arrays and gives back numpy arrays (`collate` turns a batch into torch tensors).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from opd_client.align.config import AlignConfig
from opd_client.align.errors import LossyEncodingError
from opd_client.align.special import find_roles, map_by_role, policy_mask, role_of
from opd_client.align.stats import AlignStats, MaskReason
from opd_client.align.tokenizer import Prompt, TokenizerSide
from opd_client.align.utf8 import decode_response_bytes
from opd_client.align.vocab_map import (
    VocabMap,
    cached_vocab_map,
    default_cache_dir,
    identity_map,
    map_topk,
)


@dataclass(frozen=True)
class AlignmentPlan:
    """What to send to the teacher for one response, and where each position reads.

    teacher_ids_N: int32 teacher prompt (teacher template) + teacher response tokens.
    num_prompt_tokens: how many of them are the prompt.
    score_from: first row needed (the last prompt token's); send it as `score_from`.
    row_T: int64 row p (0 ≤ p < N, before score_from) per student position, -1 if none.
    reason_T: int8 `MaskReason` per position (KEPT where the loss uses it).
    student_spans_T2: int64 [start, end) byte spans of y_t in `response_bytes`
        (special tokens are zero-width: they have no text).
    teacher_spans_M2: the same for the teacher's response tokens (role tokens zero-width).
    teacher_token_T: int64 index into teacher_ids_N of the one teacher token covering
        exactly y_t's bytes, -1 otherwise (sampled-token OPD needs it).
    response_bytes: the response as bytes; response_text: as sent to the teacher.
    """

    teacher_ids_N: np.ndarray
    num_prompt_tokens: int
    score_from: int
    row_T: np.ndarray
    reason_T: np.ndarray
    student_spans_T2: np.ndarray
    teacher_spans_M2: np.ndarray
    teacher_token_T: np.ndarray
    response_bytes: bytes
    response_text: str

    @property
    def aligned_T(self) -> np.ndarray:
        return self.row_T >= 0

    @property
    def mask_T(self) -> np.ndarray:
        return self.reason_T == MaskReason.KEPT

    @property
    def teacher_response_ids(self) -> np.ndarray:
        return self.teacher_ids_N[self.num_prompt_tokens :]


@dataclass(frozen=True)
class AlignedSupport:
    """One response's support in the student vocabulary: the `SupportBatch` fields
    without the batch axis. support_ids_TK int64, teacher_logprobs_TK float32,
    support_mask_TK bool (False for padding and unmapped slots), mask_T bool."""

    support_ids_TK: np.ndarray
    teacher_logprobs_TK: np.ndarray
    support_mask_TK: np.ndarray
    mask_T: np.ndarray
    reason_T: np.ndarray
    stats: AlignStats


class TokenizerBridge:
    """Built once per (student, teacher) pair; `plan` and `support` per response."""

    def __init__(
        self,
        student: TokenizerSide,
        teacher: TokenizerSide,
        config: AlignConfig | None = None,
        teacher_roles: Mapping[str, int] | None = None,
    ) -> None:
        self.config = config or AlignConfig()
        self.student = student
        self.teacher = teacher
        self.identity = student.fingerprint == teacher.fingerprint
        self.student_roles = find_roles(student, self.config)
        # The service's TeacherInfo.special_tokens, when given, override what we found.
        self.teacher_roles = {**find_roles(teacher, self.config), **dict(teacher_roles or {})}
        cache = Path(self.config.cache_dir) if self.config.cache_dir else default_cache_dir()
        self.vocab_map: VocabMap = (
            identity_map(teacher.size)
            if self.identity
            else cached_vocab_map(
                student,
                teacher,
                self.student_roles,
                self.teacher_roles,
                self.config.prefix_fallback,
                cache,
            )
        )

    @classmethod
    def from_paths(
        cls, student: str | Path, teacher: str | Path, config: AlignConfig | None = None
    ) -> TokenizerBridge:
        return cls(TokenizerSide.load(student), TokenizerSide.load(teacher), config)

    def _is_event(self, sid: int) -> bool:
        """A student token that stands for a role, not for text: it gets no bytes and is
        passed to the teacher as the teacher's token of the same role (if any)."""
        if sid in self.student.special_ids:
            return True
        role = role_of(sid, self.student_roles)
        return role is not None and sid in self.student.added_ids and role in self.teacher_roles

    def plan(self, prompt: Prompt, response_ids: Sequence[int]) -> AlignmentPlan:
        """Teacher ids for `prompt` + the student's response, and the row per position."""
        resp = [int(i) for i in response_ids]
        T = len(resp)
        prompt_ids = self.teacher.render_prompt(prompt)
        n = len(prompt_ids)
        events = [self._is_event(i) for i in resp]
        lengths = np.array(
            [0 if ev else len(self.student.piece(i)) for i, ev in zip(resp, events, strict=True)],
            dtype=np.int64,
        )
        ends = np.cumsum(lengths, dtype=np.int64)
        spans_T2 = np.stack([ends - lengths, ends], axis=1) if T else np.zeros((0, 2), np.int64)
        response = b"".join(
            self.student.piece(i) for i, ev in zip(resp, events, strict=True) if not ev
        )
        row_T = np.full(T, -1, dtype=np.int64)
        reason_T = np.full(T, MaskReason.UNALIGNED, dtype=np.int8)
        one_T = np.full(T, -1, dtype=np.int64)
        if self.identity:
            teacher = prompt_ids + resp
            if n > 0:
                row_T[:] = np.arange(n - 1, n - 1 + T)
                reason_T[:] = MaskReason.KEPT
            one_T[:] = np.arange(n, n + T)
            teacher_spans: Any = spans_T2
            text = decode_response_bytes(response).text
        else:
            teacher, teacher_spans, text = self._retokenize(
                prompt_ids, resp, events, spans_T2, response, row_T, reason_T, one_T
            )
        policy_T = policy_mask(
            resp, spans_T2, response, self.student, self.student_roles, self.config
        )
        reason_T[policy_T & (reason_T == MaskReason.KEPT)] = MaskReason.SPECIAL_POLICY
        return AlignmentPlan(
            teacher_ids_N=np.asarray(teacher, dtype=np.int32),
            num_prompt_tokens=n,
            score_from=max(n - 1, 0),
            row_T=row_T,
            reason_T=reason_T,
            student_spans_T2=spans_T2,
            teacher_spans_M2=np.asarray(teacher_spans, dtype=np.int64).reshape(-1, 2),
            teacher_token_T=one_T,
            response_bytes=response,
            response_text=text,
        )

    def _retokenize(
        self,
        prompt_ids: list[int],
        resp: list[int],
        events: list[bool],
        spans_T2: np.ndarray,
        response: bytes,
        row_T: np.ndarray,
        reason_T: np.ndarray,
        one_T: np.ndarray,
    ) -> tuple[list[int], list[tuple[int, int]], str]:
        """Different tokenizers: tokenize each text run between role tokens for the
        teacher, fill row_T / reason_T / one_T in place."""
        teacher = list(prompt_ids)
        teacher_spans: list[tuple[int, int]] = []
        texts: list[str] = []
        last_row = len(teacher) - 1  # the row predicting what follows the teacher prefix
        t, T = 0, len(resp)
        while t < T:
            if events[t]:
                row_T[t] = last_row
                reason_T[t] = MaskReason.KEPT if last_row >= 0 else MaskReason.UNALIGNED
                mapped = map_by_role(resp[t], self.student_roles, self.teacher_roles)
                if mapped is None:
                    reason_T[t] = MaskReason.SPECIAL_UNMAPPED
                else:
                    teacher.append(mapped)
                    b = int(spans_T2[t, 0])
                    teacher_spans.append((b, b))
                    one_T[t] = len(teacher) - 1
                    last_row = len(teacher) - 1
                t += 1
                continue
            u = t
            while u < T and not events[u]:
                u += 1
            base = int(spans_T2[t, 0])
            run = response[base : int(spans_T2[u - 1, 1])]
            bmap = decode_response_bytes(run)
            texts.append(bmap.text)
            try:
                enc = self.teacher.encode(bmap.text)
            except LossyEncodingError:
                if self.config.on_lossy == "error":
                    raise
                reason_T[:] = MaskReason.LOSSY_ENCODING
                row_T[:] = -1
                enc = None
            if enc is None:
                break
            # Run byte offset -> index into `teacher` of the token ending there.
            end_at: dict[int, int] = {0: last_row}
            first = len(teacher)
            for j, (s, e) in enumerate(enc.spans_M2.tolist()):
                rs, re_ = bmap.to_response_offset(s), bmap.to_response_offset(e)
                teacher_spans.append(
                    (base + (rs if rs is not None else s), base + (re_ if re_ is not None else e))
                )
                if re_ is not None:
                    end_at[re_] = first + j
            teacher.extend(int(i) for i in enc.ids_M)
            for k in range(t, u):
                s, e = int(spans_T2[k, 0]) - base, int(spans_T2[k, 1]) - base
                if bmap.in_invalid_run(s, e):
                    reason_T[k] = MaskReason.INVALID_UTF8
                    continue
                row = end_at.get(s)
                if row is None or row < 0:
                    continue
                row_T[k], reason_T[k] = row, MaskReason.KEPT
                after = end_at.get(e)
                if e > s and after is not None and after == row + 1:
                    one_T[k] = after
            last_row = len(teacher) - 1
            t = u
        return teacher, teacher_spans, "".join(texts)

    def support(
        self,
        plan: AlignmentPlan,
        topk_ids_PK: np.ndarray,
        topk_logprobs_PK: np.ndarray,
        score_from: int | None = None,
    ) -> AlignedSupport:
        """Map the teacher's rows (row p of the sequence at index p - score_from) onto
        the student's positions and vocabulary. K stays the teacher's K."""
        start = plan.score_from if score_from is None else int(score_from)
        ids_PK = np.asarray(topk_ids_PK)
        lp_PK = np.asarray(topk_logprobs_PK)
        if ids_PK.ndim != 2 or ids_PK.shape != lp_PK.shape:
            raise ValueError(
                f"topk_ids_PK and topk_logprobs_PK must both be [P, K], "
                f"got {ids_PK.shape} and {lp_PK.shape}"
            )
        P, K = ids_PK.shape
        T = len(plan.row_T)
        reason_T = plan.reason_T.copy()
        idx_T = plan.row_T - start
        has_T = (plan.row_T >= 0) & (idx_T >= 0) & (idx_T < P)
        reason_T[(plan.row_T >= 0) & ~has_T & (reason_T == MaskReason.KEPT)] = (
            MaskReason.ROW_MISSING
        )
        sel = np.flatnonzero(has_T)
        rows = map_topk(self.vocab_map, ids_PK[idx_T[sel]], lp_PK[idx_T[sel]])
        support_ids_TK = np.zeros((T, K), dtype=np.int64)
        logprobs_TK = np.zeros((T, K), dtype=np.float32)
        smask_TK = np.zeros((T, K), dtype=bool)
        support_ids_TK[sel], logprobs_TK[sel], smask_TK[sel] = (
            rows.support_ids_RK,
            rows.logprobs_RK,
            rows.mask_RK,
        )
        empty_T = has_T & ~smask_TK.any(axis=1)
        reason_T[empty_T & (reason_T == MaskReason.KEPT)] = MaskReason.NO_MAPPED_SUPPORT
        mask_T = reason_T == MaskReason.KEPT
        smask_TK &= mask_T[:, None]
        stats = AlignStats.from_reasons(reason_T, plan.row_T >= 0)
        stats.rows_scored = int(sel.size)
        stats.topk_mass = float(rows.topk_mass_R.sum())
        stats.mapped_mass = float(rows.mapped_mass_R.sum())
        stats.prefix_mass = float(rows.prefix_mass_R.sum())
        return AlignedSupport(support_ids_TK, logprobs_TK, smask_TK, mask_T, reason_T, stats)


def collate(supports: Sequence[AlignedSupport], pad_T: int | None = None) -> dict[str, Any]:
    """Stack per-response supports into the `SupportBatch` tensors, padded on T (and K)
    with masked slots: support_ids_BTK, teacher_logprobs_BTK, support_mask_BTK, mask_BT."""
    import torch

    T = max([len(s.mask_T) for s in supports] + [pad_T or 0])
    K = max([s.support_ids_TK.shape[1] for s in supports] + [1])
    B = len(supports)
    ids = np.zeros((B, T, K), dtype=np.int64)
    lps = np.zeros((B, T, K), dtype=np.float32)
    smask = np.zeros((B, T, K), dtype=bool)
    mask = np.zeros((B, T), dtype=bool)
    for b, s in enumerate(supports):
        t, k = s.support_ids_TK.shape
        ids[b, :t, :k] = s.support_ids_TK
        lps[b, :t, :k] = s.teacher_logprobs_TK
        smask[b, :t, :k] = s.support_mask_TK
        mask[b, :t] = s.mask_T
    return {
        "support_ids_BTK": torch.from_numpy(ids),
        "teacher_logprobs_BTK": torch.from_numpy(lps),
        "support_mask_BTK": torch.from_numpy(smask),
        "mask_BT": torch.from_numpy(mask),
    }
