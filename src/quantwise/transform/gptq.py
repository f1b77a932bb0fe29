"""GPTQ: round weights column by column, pushing each rounding error onto the columns not yet
rounded, weighted by the inverse Hessian of the layer's inputs (Frantar et al., 2022).

Pure function; the orchestration (collecting Hessians layer by layer) lives in ``schemes``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from quantwise.numerics import choose_qparams, quantize
from quantwise.numerics.qtypes import QType


def hessian_update(h: torch.Tensor, n: int, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Running ``H = 2/n * sum(x x^T)`` over the rows of ``x`` (..., K). Returns the new (H, n)."""
    x = x.reshape(-1, x.shape[-1]).to(torch.float64)  # (M, K)
    m = x.shape[0]
    h = h * (n / (n + m)) + (2.0 / (n + m)) * (x.t() @ x)
    return h, n + m


def gptq_quantize(
    w: torch.Tensor,
    h: torch.Tensor,
    qtype: QType,
    group_size: int,
    symmetric: bool,
    damp: float = 0.01,
    block: int = 128,
    fp16_scales: bool = False,
    full_range: bool = False,
    act_order: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize ``w`` (N, K) with GPTQ given the input Hessian ``h`` (K, K).

    Args:
        group_size: 0 for one scale per output row, else scales per ``group_size`` columns.
            Group scales are chosen when the sweep reaches the group, from the
            error-compensated weights (as the reference implementation does).
        act_order: sweep the columns in order of decreasing Hessian diagonal (the inputs with the
            most energy first, while the most columns are left to absorb their error). Group scales
            are then fixed beforehand from the unquantized weights ("static groups"), so every group
            is still ``group_size`` consecutive columns in the layer's own order.

    Returns:
        ``(q (N, K), scale, zero_point)``; scale/zero point are ``(N,)`` or ``(N, K // group_size)``.
    """
    w = w.detach().to(torch.float64).clone()  # (N, K)
    n_out, k = w.shape
    h = h.detach().to(torch.float64).clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0

    def qparams(cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return choose_qparams(
            cols.amin(dim=1), cols.amax(dim=1), qtype, symmetric, fp16_scale=fp16_scales, full_range=full_range
        )

    g = group_size or k
    q_all = torch.zeros(n_out, k, dtype=torch.int16)
    dynamic = bool(group_size) and not act_order  # group scales chosen as the sweep reaches each group
    # otherwise fixed beforehand from the unquantized weights: one per row, or static groups
    fixed = [] if dynamic else [qparams(w[:, c : c + g]) for c in range(0, k, g)]
    order = torch.argsort(torch.diag(h), descending=True, stable=True) if act_order else torch.arange(k)
    w, h = (w[:, order], h[order][:, order]) if act_order else (w, h)
    found: list[tuple[torch.Tensor, torch.Tensor]] = []

    def column(pos: int, w1: torch.Tensor, i: int) -> torch.Tensor:
        """Quantize the column at sweep position ``pos`` (``w1[:, i]``); its dequantized values."""
        col = int(order[pos])  # in the layer's own order
        if dynamic and col % group_size == 0:
            found.append(qparams(w1[:, i : i + group_size]))
        s, z = found[-1] if dynamic else fixed[col // g]
        q = quantize(w1[:, i], s, z, qtype)
        q_all[:, col] = q.to(torch.int16)
        return (q.to(torch.float64) - z.to(torch.float64)) * s.to(torch.float64)

    h += damp * torch.mean(torch.diag(h)) * torch.eye(k, dtype=torch.float64)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)  # (K, K)
    _sweep(w, hinv, max(block, group_size), column)
    pairs = found if dynamic else fixed
    scale = torch.stack([p[0] for p in pairs], dim=1) if group_size else pairs[0][0]
    zp = torch.stack([p[1] for p in pairs], dim=1) if group_size else pairs[0][1]
    return q_all.to(qtype.torch_dtype), scale, zp


def _sweep(
    w: torch.Tensor, hinv: torch.Tensor, block: int, column: Callable[[int, torch.Tensor, int], torch.Tensor]
) -> None:
    """GPTQ's sweep over ``w``'s columns in blocks: ``column(position, block weights, index in
    block)`` rounds one column; its error is spread over the columns not yet rounded."""
    k = w.shape[1]
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            deq = column(i1 + i, w1, i)
            e = (w1[:, i] - deq) / hinv1[i, i]
            w1[:, i:] -= e.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
