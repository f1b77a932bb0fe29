"""GPTQ: round weights column by column, pushing each rounding error onto the columns not yet
rounded, weighted by the inverse Hessian of the layer's inputs (Frantar et al., 2022).

Pure function; the orchestration (collecting Hessians layer by layer) lives in ``schemes``.
"""

from __future__ import annotations

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
    if act_order:
        return _act_order(w, h, qtype, group_size, symmetric, damp, block, fp16_scales, full_range)
    w = w.detach().to(torch.float64).clone()  # (N, K)
    n_out, k = w.shape
    h = h.detach().to(torch.float64).clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.mean(torch.diag(h)) * torch.eye(k, dtype=torch.float64)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)  # (K, K)
    block = max(block, group_size)
    q_all = torch.zeros(n_out, k, dtype=torch.int16)
    scales, zps = [], []
    if group_size == 0:
        s, z = choose_qparams(
            w.amin(dim=1), w.amax(dim=1), qtype, symmetric, fp16_scale=fp16_scales, full_range=full_range
        )  # (N,)
        scales, zps = [s], [z]
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if group_size and col % group_size == 0:
                grp = w1[:, i : i + group_size]
                s, z = choose_qparams(
                    grp.amin(dim=1), grp.amax(dim=1), qtype, symmetric, fp16_scale=fp16_scales, full_range=full_range
                )
                scales.append(s)
                zps.append(z)
            s, z = scales[-1], zps[-1]
            wc = w1[:, i]
            q = quantize(wc, s, z, qtype)
            deq = (q.to(torch.float64) - z.to(torch.float64)) * s.to(torch.float64)
            q_all[:, col] = q.to(torch.int16)
            e = (wc - deq) / hinv1[i, i]
            w1[:, i:] -= e.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    scale = torch.stack(scales, dim=1) if group_size else scales[0]
    zp = torch.stack(zps, dim=1) if group_size else zps[0]
    return q_all.to(qtype.torch_dtype), scale, zp


def _act_order(
    w: torch.Tensor,
    h: torch.Tensor,
    qtype: QType,
    group_size: int,
    symmetric: bool,
    damp: float,
    block: int,
    fp16_scales: bool,
    full_range: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ with activation order and static groups (see ``gptq_quantize``)."""
    w = w.detach().to(torch.float64).clone()
    n_out, k = w.shape
    h = h.detach().to(torch.float64).clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    g = group_size or k
    pairs = [
        choose_qparams(
            w[:, c : c + g].amin(dim=1),
            w[:, c : c + g].amax(dim=1),
            qtype,
            symmetric,
            fp16_scale=fp16_scales,
            full_range=full_range,
        )
        for c in range(0, k, g)
    ]
    scales = torch.stack([p[0] for p in pairs], dim=1)  # (N, groups)
    zps = torch.stack([p[1] for p in pairs], dim=1)
    perm = torch.argsort(torch.diag(h), descending=True, stable=True)
    w, h = w[:, perm], h[perm][:, perm]
    h += damp * torch.mean(torch.diag(h)) * torch.eye(k, dtype=torch.float64)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q_all = torch.zeros(n_out, k, dtype=torch.int16)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = int(perm[i1 + i])  # the column in the layer's own order
            s, z = scales[:, col // g], zps[:, col // g]
            wc = w1[:, i]
            q = quantize(wc, s, z, qtype)
            deq = (q.to(torch.float64) - z.to(torch.float64)) * s.to(torch.float64)
            q_all[:, col] = q.to(torch.int16)
            e = (wc - deq) / hinv1[i, i]
            w1[:, i:] -= e.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    if not group_size:
        scales, zps = scales[:, 0], zps[:, 0]
    return q_all.to(qtype.torch_dtype), scales, zps
