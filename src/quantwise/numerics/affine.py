"""Affine quantization math: pure functions, no state.

Conventions (the ONNX ``QuantizeLinear`` definition, which is what the runtimes execute):
``q = clamp(round_half_even(x / scale) + zero_point, qmin, qmax)`` and
``x_hat = (q - zero_point) * scale``.
"""

from __future__ import annotations

import torch

from quantwise.numerics.granularity import Granularity, PerTensor, expand_param, reduce_min_max
from quantwise.numerics.qtypes import QType

_EPS = torch.finfo(torch.float32).eps


def choose_qparams(
    min_val: torch.Tensor,
    max_val: torch.Tensor,
    qtype: QType,
    symmetric: bool,
    eps: float = _EPS,
    fp16_scale: bool = False,
    full_range: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point that map ``[min_val, max_val]`` onto ``qtype``'s grid.

    The range is first widened to contain zero, so zero is exactly representable.
    Symmetric ranges use ``max(|min|, |max|) / ((qmax - qmin) / 2)`` and a zero point at the
    middle of the grid (0 for signed types, 128 for uint8), as PyTorch's observers do.

    Args:
        min_val: Range minimum (any shape; one entry per block).
        max_val: Range maximum, same shape.
        qtype: Integer target type.
        symmetric: Symmetric around zero, or affine.
        eps: Smallest allowed scale.
        full_range: signed symmetric only: the block's value of largest magnitude maps to
            ``qmin`` (-8 for int4), so the scale is ``extreme / qmin`` and negative when the
            extreme is positive; the grid is one step finer than ``max|x| / 7.5``. This is how ONNX
            Runtime's MatMulNBits quantizer and llama.cpp's Q4_0 choose int4 scales.
        fp16_scale: round each scale to the nearest half-precision value (the zero point then
            follows from it), for formats that store scales as fp16 (GGUF's Q4_0/Q8_0 blocks).

    Returns:
        ``(scale float32, zero_point int32)`` with the shape of ``min_val``.

    Example:
        >>> s, z = choose_qparams(torch.tensor(-1.0), torch.tensor(3.0), UINT8, symmetric=False)
    """
    min_val = torch.minimum(torch.as_tensor(min_val, dtype=torch.float32), torch.zeros(()))
    max_val = torch.maximum(torch.as_tensor(max_val, dtype=torch.float32), torch.zeros(()))
    qmin, qmax = qtype.qmin, qtype.qmax
    if symmetric and full_range and qtype.signed:
        extreme = torch.where(-min_val > max_val, min_val, max_val)
        scale = extreme / qmin
        scale = torch.where(scale.abs() < eps, torch.full_like(scale, eps), scale)
        scale = _fp16_signed(scale) if fp16_scale else scale
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    elif symmetric:
        amax = torch.maximum(-min_val, max_val)
        scale = amax / ((qmax - qmin) / 2)
        scale = _fp16(torch.clamp(scale, min=eps)) if fp16_scale else torch.clamp(scale, min=eps)
        zp_value = 0 if qtype.signed else (qmin + qmax + 1) // 2
        zero_point = torch.full_like(scale, zp_value, dtype=torch.int32)
    else:
        scale = (max_val - min_val) / float(qmax - qmin)
        scale = _fp16(torch.clamp(scale, min=eps)) if fp16_scale else torch.clamp(scale, min=eps)
        zero_point = qmin - torch.round(min_val / scale)
        zero_point = torch.clamp(zero_point, qmin, qmax).to(torch.int32)
    return scale.to(torch.float32), zero_point


def _fp16_signed(scale: torch.Tensor) -> torch.Tensor:
    return torch.sign(scale) * _fp16(scale.abs())


def _fp16(scale: torch.Tensor) -> torch.Tensor:
    """The nearest half-precision value, never below fp16's smallest subnormal (2**-24)."""
    return torch.clamp(scale, min=2.0**-24).to(torch.float16).to(torch.float32)


def quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qtype: QType,
    granularity: Granularity = PerTensor(),
) -> torch.Tensor:
    """Map float values to integers on ``qtype``'s grid (round half to even, saturate)."""
    s = expand_param(torch.as_tensor(scale, dtype=torch.float32), x, granularity)
    z = expand_param(torch.as_tensor(zero_point, dtype=torch.int32), x, granularity)
    q = torch.round(x.to(torch.float32) / s) + z
    q = torch.clamp(q, qtype.qmin, qtype.qmax)
    return q.to(qtype.torch_dtype)


def dequantize(
    q: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    granularity: Granularity = PerTensor(),
) -> torch.Tensor:
    """Map integers back to floats: ``(q - zero_point) * scale``."""
    s = expand_param(torch.as_tensor(scale, dtype=torch.float32), q, granularity)
    z = expand_param(torch.as_tensor(zero_point, dtype=torch.int32), q, granularity)
    return (q.to(torch.int32) - z).to(torch.float32) * s


class _FakeQuantize(torch.autograd.Function):
    """Quantize-dequantize with a straight-through gradient, zero outside the grid."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qtype, granularity):  # type: ignore[override]
        s = expand_param(scale, x, granularity)
        z = expand_param(zero_point.to(torch.float32), x, granularity)
        q = torch.round(x / s) + z
        ctx.save_for_backward((q >= qtype.qmin) & (q <= qtype.qmax))
        return (torch.clamp(q, qtype.qmin, qtype.qmax) - z) * s

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        return grad * mask, None, None, None, None


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qtype: QType,
    granularity: Granularity = PerTensor(),
) -> torch.Tensor:
    """``dequantize(quantize(x))`` in float, differentiable with the straight-through estimator.

    The gradient passes unchanged where ``x`` falls inside the grid and is zero where it clips,
    as ``torch.fake_quantize_per_tensor_affine`` defines it.
    """
    scale = torch.as_tensor(scale, dtype=torch.float32)
    zero_point = torch.as_tensor(zero_point, dtype=torch.int32)
    return _FakeQuantize.apply(x, scale, zero_point, qtype, granularity)


def quantize_tensor(
    x: torch.Tensor,
    qtype: QType,
    granularity: Granularity,
    symmetric: bool,
    fp16_scale: bool = False,
    full_range: bool = False,
    reduce_range: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Min-max quantize ``x`` in one call: returns ``(q, scale, zero_point)``; ``reduce_range``
    (symmetric int8): one bit less, the values within [-63, 63], where x86 u8 x s8 kernels without
    VNNI cannot saturate (ONNX Runtime treats weights outside [-64, 63] as at risk)."""
    lo, hi = reduce_min_max(x.detach().to(torch.float32), granularity)
    scale, zp = choose_qparams(lo, hi, qtype, symmetric, fp16_scale=fp16_scale, full_range=full_range)
    if reduce_range:
        if not (symmetric and qtype.signed):
            raise ValueError("reduce_range is for symmetric signed weights")
        scale = scale * ((qtype.qmax - qtype.qmin) / 2 / 63)
    return quantize(x, scale, zp, qtype, granularity), scale, zp


def fake_quantize_lsq(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qmin: int,
    qmax: int,
    grad_scale: float = 1.0,
) -> torch.Tensor:
    """Fake quantization differentiable in ``x`` *and* ``scale`` (LSQ, Esser et al. 2020).

    ``scale`` and ``zero_point`` must already broadcast against ``x``. The forward value is
    ``(clamp(round(x / s) + z, qmin, qmax) - z) * s``, as :func:`fake_quantize`. The rounding is
    straight-through, so ``x`` gets the clip-masked gradient and ``s`` gets LSQ's
    ``round(x/s) - x/s`` inside the grid and ``qmin - z`` / ``qmax - z`` where it clips, scaled by
    ``grad_scale`` (LSQ uses ``1 / sqrt(numel * qmax)``). A scale that does not require grad
    makes this the fixed-range straight-through fake quantizer.
    """
    sg = scale * grad_scale
    s = scale.detach() + (sg - sg.detach())  # exactly the value of scale, gradient scaled by grad_scale
    z = zero_point.to(x.dtype)
    t = x / s
    r = t + (torch.round(t) - t).detach()  # round(x/s) with a straight-through gradient, then add z (as ONNX)
    v = torch.clamp(r + z, qmin, qmax)
    return (v - z) * s


def quantize_bias(
    bias: torch.Tensor, input_scale: float | torch.Tensor, weight_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The int32 bias of a static layer and its scale, ``s_b = s_in * s_w`` (per output channel or
    per tensor): ``b_q = clamp(round(b / s_b), int32)``. The one definition every runtime and QAT use.

    Returns:
        ``(b_q int32 (N,), s_b float32 (N,))``.
    """
    s_b = torch.as_tensor(input_scale, dtype=torch.float64) * weight_scale.to(torch.float64).reshape(-1)  # (N,) or (1,)
    s_b = s_b.expand(bias.shape) if s_b.numel() == 1 else s_b
    b_q = torch.clamp(torch.round(bias.detach().to(torch.float64) / s_b), -(2**31), 2**31 - 1).to(torch.int32)
    return b_q, s_b.to(torch.float32).contiguous()
