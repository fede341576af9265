"""The fused support path: the student's logits at the support only, from hidden states.

Why this module exists: LSM needs z only at the K ids of S_t, never the [T, V] logits
(DESIGN.md §1, "Fused path"). z_S = h_t · W[S_t] costs T·K·D instead of T·V·D (≈4,700×
fewer for V = 151,936, K = 32) and removes the [T, V] activation and its gradient. The
custom autograd functions here run forward *and* backward in chunks of positions and save
only their inputs (h, W, ids), so nothing of size [T, K, D] or [T, V] outlives one chunk.
`student_logz` does the same for the full log-normaliser that the unnormalised loss needs.

It knows nothing about losses or supports beyond the ids: any loss on the returned
logits works.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from opd_client.losses.masked import compute_dtype

DEFAULT_SUPPORT_CHUNK = 128
DEFAULT_VOCAB_CHUNK = 128


def _flatten(hidden_BTD: Tensor, lm_head_VD: Tensor) -> Tensor:
    if hidden_BTD.dim() != 3 or lm_head_VD.dim() != 2:
        raise ValueError(
            f"hidden_BTD must be [B, T, D] and lm_head_VD [V, D], got {tuple(hidden_BTD.shape)}"
            f" and {tuple(lm_head_VD.shape)}"
        )
    if hidden_BTD.shape[-1] != lm_head_VD.shape[-1]:
        raise ValueError(f"hidden size {hidden_BTD.shape[-1]} ≠ LM head's {lm_head_VD.shape[-1]}")
    return hidden_BTD.reshape(-1, hidden_BTD.shape[-1])


def _check_chunk(chunk_size: int) -> None:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be ≥ 1, got {chunk_size}")


class _SupportLogits(torch.autograd.Function):
    """z[n, k] = h[n] · W[ids[n, k]], chunked over n in forward and backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hidden_ND: Tensor, lm_head_VD: Tensor, ids_NK: Tensor, chunk_size: int
    ) -> Tensor:
        dtype = compute_dtype(hidden_ND, lm_head_VD)
        n_total, k = ids_NK.shape
        d = hidden_ND.shape[-1]
        z_NK = hidden_ND.new_empty((n_total, k), dtype=dtype)
        # One gather buffer reused by every chunk: fresh large allocations page-fault.
        rows_buf = lm_head_VD.new_empty((min(chunk_size, n_total) * k, d))
        for start in range(0, n_total, chunk_size):
            stop = min(start + chunk_size, n_total)
            rows = rows_buf[: (stop - start) * k]
            torch.index_select(lm_head_VD, 0, ids_NK[start:stop].reshape(-1), out=rows)
            w_CKD = rows.to(dtype).view(stop - start, k, d)
            h_CD1 = hidden_ND[start:stop].to(dtype).unsqueeze(-1)
            z_NK[start:stop] = torch.bmm(w_CKD, h_CD1).squeeze(-1)
        ctx.save_for_backward(hidden_ND, lm_head_VD, ids_NK)
        ctx.chunk_size = chunk_size
        return z_NK

    @staticmethod
    def backward(ctx: Any, grad_NK: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:  # type: ignore[override]
        hidden_ND, lm_head_VD, ids_NK = ctx.saved_tensors
        chunk_size: int = ctx.chunk_size
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dtype = compute_dtype(hidden_ND, lm_head_VD)
        n_total, k = ids_NK.shape
        d = hidden_ND.shape[-1]
        grad_h_ND = torch.empty_like(hidden_ND) if need_h else None
        # W's gradient is dense (its shape is W's) but only the rows of S receive anything.
        grad_w_VD = torch.zeros(lm_head_VD.shape, dtype=dtype) if need_w else None
        rows_buf = lm_head_VD.new_empty((min(chunk_size, n_total) * k, d))
        outer_buf = hidden_ND.new_empty((min(chunk_size, n_total), k, d), dtype=dtype)
        for start in range(0, n_total, chunk_size):
            stop = min(start + chunk_size, n_total)
            ids_C = ids_NK[start:stop].reshape(-1)
            g_CK = grad_NK[start:stop].to(dtype)
            if grad_h_ND is not None:
                rows = rows_buf[: (stop - start) * k]
                torch.index_select(lm_head_VD, 0, ids_C, out=rows)
                w_CKD = rows.to(dtype).view(stop - start, k, d)
                grad_h_ND[start:stop] = torch.bmm(g_CK.unsqueeze(1), w_CKD).squeeze(1)
            if grad_w_VD is not None:
                h_CD = hidden_ND[start:stop].to(dtype)
                outer_CKD = outer_buf[: stop - start]
                torch.mul(g_CK.unsqueeze(-1), h_CD.unsqueeze(1), out=outer_CKD)
                grad_w_VD.index_add_(0, ids_C, outer_CKD.view(-1, d))
        if grad_w_VD is not None and grad_w_VD.dtype != lm_head_VD.dtype:
            grad_w_VD = grad_w_VD.to(lm_head_VD.dtype)
        return grad_h_ND, grad_w_VD, None, None


def support_logits(
    hidden_BTD: Tensor,
    lm_head_VD: Tensor,
    support_ids_BTK: Tensor,
    chunk_size: int = DEFAULT_SUPPORT_CHUNK,
) -> Tensor:
    """The student's logits at the support, z[b, t, k] = h[b, t] · W[S[b, t, k]].

    Equal to `(hidden_BTD @ lm_head_VD.T).gather(-1, support_ids_BTK)` in value and in the
    gradients of h and W, without the [B, T, V] logits. Computed in chunks of
    `chunk_size` positions in float32 (float64 if an input is); the backward pass is
    chunked too and accumulates W's gradient row-wise with `index_add_`.

    Args:
        hidden_BTD: float [B, T, D], the final hidden states (after the last norm).
        lm_head_VD: float [V, D], the output embedding (LM head) weight.
        support_ids_BTK: int [B, T, K], ids in [0, V) (masked slots hold a valid id, e.g. 0).
        chunk_size: positions per chunk; peak extra memory ≈ 2 · chunk_size · K · D · 4 bytes
            (≈ 29 MB at the default 128 positions, K = 32, D = 896).

    Returns:
        float32 (or float64) [B, T, K].
    """
    _check_chunk(chunk_size)
    hidden_ND = _flatten(hidden_BTD, lm_head_VD)
    if support_ids_BTK.shape[:2] != hidden_BTD.shape[:2]:
        raise ValueError(
            f"support_ids_BTK must start with [B, T] = {tuple(hidden_BTD.shape[:2])},"
            f" got {tuple(support_ids_BTK.shape)}"
        )
    ids_NK = support_ids_BTK.reshape(-1, support_ids_BTK.shape[-1]).long()
    z_NK = _SupportLogits.apply(hidden_ND, lm_head_VD, ids_NK, chunk_size)
    return z_NK.view(support_ids_BTK.shape)


class _StudentLogZ(torch.autograd.Function):
    """log Z[n] = logsumexp_v (h[n] · W[v]), chunked over n; backward recomputes each chunk."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hidden_ND: Tensor, lm_head_VD: Tensor, chunk_size: int
    ) -> Tensor:
        dtype = compute_dtype(hidden_ND, lm_head_VD)
        w_VD = lm_head_VD.to(dtype)
        logz_N = hidden_ND.new_empty(hidden_ND.shape[0], dtype=dtype)
        for start in range(0, hidden_ND.shape[0], chunk_size):
            stop = min(start + chunk_size, hidden_ND.shape[0])
            logits_CV = hidden_ND[start:stop].to(dtype) @ w_VD.T
            logz_N[start:stop] = torch.logsumexp(logits_CV, dim=-1)
        ctx.save_for_backward(hidden_ND, lm_head_VD, logz_N)
        ctx.chunk_size = chunk_size
        return logz_N

    @staticmethod
    def backward(ctx: Any, grad_N: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        hidden_ND, lm_head_VD, logz_N = ctx.saved_tensors
        chunk_size: int = ctx.chunk_size
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dtype = logz_N.dtype
        w_VD = lm_head_VD.to(dtype)
        grad_h_ND = torch.empty_like(hidden_ND) if need_h else None
        grad_w_VD = torch.zeros(lm_head_VD.shape, dtype=dtype) if need_w else None
        # ∂ log Z / ∂z_v = softmax(z)_v, so ∂/∂h = p W and ∂/∂W = pᵀ h, scaled by the
        # incoming gradient.
        for start in range(0, hidden_ND.shape[0], chunk_size):
            stop = min(start + chunk_size, hidden_ND.shape[0])
            h_CD = hidden_ND[start:stop].to(dtype)
            p_CV = (h_CD @ w_VD.T - logz_N[start:stop, None]).exp_()
            p_CV.mul_(grad_N[start:stop, None].to(dtype))
            if grad_h_ND is not None:
                grad_h_ND[start:stop] = p_CV @ w_VD
            if grad_w_VD is not None:
                grad_w_VD.addmm_(p_CV.T, h_CD)
        if grad_w_VD is not None and grad_w_VD.dtype != lm_head_VD.dtype:
            grad_w_VD = grad_w_VD.to(lm_head_VD.dtype)
        return grad_h_ND, grad_w_VD, None


def student_logz(
    hidden_BTD: Tensor,
    lm_head_VD: Tensor,
    chunk_size: int = DEFAULT_VOCAB_CHUNK,
) -> Tensor:
    """The student's full log-normaliser, log Z_t = log Σ_{v∈V} exp(h_t · W[v]).

    What `truncated_rkl(..., renormalize=False)` needs besides the support logits. Runs in
    chunks of positions, forward and backward (the backward recomputes each chunk's
    logits), so the [B, T, V] logits never exist at once.

    Args:
        hidden_BTD: float [B, T, D].
        lm_head_VD: float [V, D].
        chunk_size: positions per chunk; peak extra memory ≈ chunk_size · V · 4 bytes
            (plus an fp32 copy of W when W is not fp32).

    Returns:
        float32 (or float64) [B, T], differentiable in h and W.
    """
    _check_chunk(chunk_size)
    hidden_ND = _flatten(hidden_BTD, lm_head_VD)
    logz_N = _StudentLogZ.apply(hidden_ND, lm_head_VD, chunk_size)
    return logz_N.view(hidden_BTD.shape[:2])
