"""Quantized operations with two faces: a PyTorch forward (the simulation) and an ONNX symbolic.

Each function here is the single definition of one quantized computation. Its ``forward``
is what the PyTorch simulation runs; its ``symbolic`` is what ``torch.onnx.export`` writes
for ONNX Runtime. Keeping both in one place is what makes the parity tests meaningful.
"""

from __future__ import annotations

import torch
from torch.autograd import Function

_ONNX_INT = {(True, 8): torch.int8, (False, 8): torch.uint8, (True, 16): torch.int16, (False, 16): torch.uint16}


def _const(g, value: torch.Tensor):
    return g.op("Constant", value_t=value)


class QDQ(Function):
    """Static activation quantization: ``QuantizeLinear -> DequantizeLinear`` per tensor, on the
    grid of ``bits`` (8 or 16) signed or unsigned integers: the tensor's own qtype, never assumed."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float, zero_point: int, signed: bool, bits: int) -> torch.Tensor:  # type: ignore[override]
        qmin, qmax = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        s = torch.tensor(scale, dtype=torch.float32)
        z = torch.tensor(float(zero_point), dtype=torch.float32)
        q = torch.clamp(torch.round(x / s) + z, qmin, qmax)
        return (q - z) * s

    @staticmethod
    def symbolic(g, x, scale: float, zero_point: int, signed: bool, bits: int):
        s = _const(g, torch.tensor(scale, dtype=torch.float32))
        z = _const(g, torch.tensor(zero_point, dtype=_ONNX_INT[(signed, bits)]))
        return g.op("DequantizeLinear", g.op("QuantizeLinear", x, s, z), s, z)


class DQ(Function):
    """Dequantize a stored integer tensor (weights, int32 biases): ``DequantizeLinear``.

    ``scale`` and ``zero_point`` are 0-d (per tensor) or 1-d along ``axis`` (per channel).
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int) -> torch.Tensor:  # type: ignore[override]
        shape = [1] * q.dim()
        if scale.dim() == 1:
            shape[axis] = -1
        s, z = scale.reshape(shape), zero_point.reshape(shape).to(torch.int64)
        return ((q.to(torch.int64) - z).to(torch.float64) * s.to(torch.float64)).to(torch.float32)

    @staticmethod
    def symbolic(g, q, scale, zero_point, axis: int):
        return g.op("DequantizeLinear", q, scale, zero_point, axis_i=axis)


class GatherDQ(Function):
    """Rows of an int8 table, dequantized after the gather: ``Gather(q) * Gather(scale)``.

    Only the looked-up rows are dequantized, so the table stays int8 in memory too.
    """

    @staticmethod
    def forward(ctx, ids: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # ids: (B, S) int64, q: (V, D) int8, scale: (V,) -> (B, S, D)
        return q[ids].to(torch.float32) * scale[ids].unsqueeze(-1)

    @staticmethod
    def symbolic(g, ids, q, scale):
        rows = g.op("Cast", g.op("Gather", q, ids, axis_i=0), to_i=1)
        s = g.op("Unsqueeze", g.op("Gather", scale, ids, axis_i=0), _const(g, torch.tensor([-1], dtype=torch.int64)))
        return g.op("Mul", rows, s)


class HalfToFloat(Function):
    """FP16-stored weights used in float32: ``CastLike(w, x)`` of a float16 initializer.

    ``CastLike`` to the activation (not ``Cast``) so that export-time constant folding cannot turn
    the float16 initializer back into a float32 one: the file keeps half the bytes.
    """

    @staticmethod
    def forward(ctx, w: torch.Tensor, like: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return w.to(like.dtype)

    @staticmethod
    def symbolic(g, w, like):
        return g.op("CastLike", w, like)


class GatherBlockDQ(Function):
    """Rows of a 4-bit table with one scale per block of the row: ONNX Runtime's
    ``com.microsoft::GatherBlockQuantized`` (uint8 data, two values per byte, low nibble first).

    ``q`` is the ``(V, D)`` int4 values held in int8 for the simulation; ``packed`` ``(V, D/2)``
    and ``zero_points`` (packed, 8 = signed zero) are what the graph stores.
    """

    @staticmethod
    def forward(ctx, ids, q, scales, packed, zero_points, block: int):  # type: ignore[override]
        # ids: (B, S), q: (V, D) int8 in [-8, 7], scales: (V, D / block) -> (B, S, D)
        return q[ids].to(torch.float32) * scales[ids].repeat_interleave(block, dim=-1)

    @staticmethod
    def symbolic(g, ids, q, scales, packed, zero_points, block: int):
        return g.op(
            "com.microsoft::GatherBlockQuantized",
            packed,
            ids,
            scales,
            zero_points,
            bits_i=4,
            block_size_i=block,
            gather_axis_i=0,
            quantize_axis_i=1,
        )


class GatherNBits(Function):
    """Rows of a tied LM head's ``MatMulNBits`` weights, for the embedding that shares them:
    ``com.microsoft::GatherBlockQuantized`` on the head's own packed bytes, scales and zero points
    (uint8 data in MatMulNBits' layout, 4 or 8 bits), so the graph holds the table once, in its
    quantized form. The simulation gathers the head's dequantized rows."""

    @staticmethod
    def forward(ctx, ids, w_deq, packed, scales, zero_points, bits: int, block: int):  # type: ignore[override]
        # ids: (B, S), w_deq: (V, D) float32 -> (B, S, D); packed (V, D*bits/8), scales (V, D/block)
        return w_deq[ids]

    @staticmethod
    def symbolic(g, ids, w_deq, packed, scales, zero_points, bits: int, block: int):
        out = g.op(
            "com.microsoft::GatherBlockQuantized",
            packed,
            ids,
            scales,
            zero_points,
            bits_i=bits,
            block_size_i=block,
            gather_axis_i=0,
            quantize_axis_i=1,
        )
        sizes, dim = ids.type().varyingSizes(), w_deq.type().sizes()[-1]
        if sizes is not None:  # the exporter cannot infer a contrib op's output: (ids..., D) float
            out.setType(w_deq.type().with_sizes([*sizes, dim]))
        return out


class DynamicQMatMul(Function):
    """Dynamic INT8 matmul: activations quantized per tensor at run time to uint8.

    ONNX: ``DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(a_scale * w_scale) -> Add(bias)``,
    which ONNX Runtime fuses into ``DynamicQuantizeMatMul``. The simulation follows the ONNX
    definition of ``DynamicQuantizeLinear`` step by step; the int32 product is exact (float64).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, w_t: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # x: (M, K) float32, w_t: (K, N) int8, w_scale: (N,) or (), bias: (N,)
        lo = torch.clamp(x.min(), max=0.0)
        hi = torch.clamp(x.max(), min=0.0)
        a_scale = (hi - lo) / 255.0
        a_scale = torch.where(a_scale == 0, torch.ones_like(a_scale), a_scale)
        a_zp = torch.clamp(torch.round((0.0 - lo) / a_scale), 0, 255)
        xq = torch.clamp(torch.round(x / a_scale) + a_zp, 0, 255)
        acc = (xq.to(torch.float64) - a_zp.to(torch.float64)) @ w_t.to(torch.float64)  # (M, N) exact int32
        return acc.to(torch.float32) * (a_scale * w_scale) + bias

    @staticmethod
    def symbolic(g, x, w_t, w_scale, bias):
        xq, a_scale, a_zp = g.op("DynamicQuantizeLinear", x, outputs=3)
        n = w_t.type().sizes()[1] if w_t.type().sizes() else None
        w_zp = _const(g, torch.zeros(n, dtype=torch.int8)) if n else _const(g, torch.tensor(0, dtype=torch.int8))
        acc = g.op("MatMulInteger", xq, w_t, a_zp, w_zp)
        accf = g.op("Cast", acc, to_i=1)  # FLOAT
        scale = g.op("Mul", a_scale, w_scale)
        return g.op("Add", g.op("Mul", accf, scale), bias)


class DynamicQMatMulPerToken(Function):
    """Dynamic INT8 matmul with one symmetric int8 scale per row (token) of ``x`` (M, K).

    ONNX: ``ReduceMax(|x|)`` per row -> scale -> ``QuantizeLinear(axis=0)`` to uint8 with zero
    point 128 (the int8 grid shifted by 128, the same integers) -> ``MatMulInteger`` (uint8 x int8,
    activation zero point 128) -> rescale by ``a_scale (M, 1) * w_scale (N,)``. uint8 activations,
    because ONNX Runtime's int8 x int8 ``MatMulInteger`` has no fast kernel on x86: on a 576x1536
    layer it took 1.24 ms per token against 0.043 ms for uint8 x int8 (FP32 MatMul: 0.085 ms), on
    an AVX2 CPU without VNNI (2026-12-04). Symmetric, because ONNX Runtime's fused
    ``MatMulIntegerToFloat`` accepts only a scalar activation zero point.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, w_t: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        a_scale = torch.clamp(x.abs().amax(dim=1, keepdim=True) / 127.0, min=1e-12)  # (M, 1)
        xq = torch.clamp(torch.round(x / a_scale), -128, 127)
        acc = xq.to(torch.float64) @ w_t.to(torch.float64)  # (M, N), exact int32
        return (acc.to(torch.float32) * w_scale) * a_scale + bias

    @staticmethod
    def symbolic(g, x, w_t, w_scale, bias):
        amax = g.op("ReduceMax", g.op("Abs", x), axes_i=[1], keepdims_i=1)  # (M, 1)
        a_scale = g.op("Max", g.op("Div", amax, _const(g, torch.tensor(127.0))), _const(g, torch.tensor(1e-12)))
        flat = g.op("Reshape", a_scale, _const(g, torch.tensor([-1], dtype=torch.int64)))  # (M,)
        shift = g.op("Add", g.op("Mul", flat, _const(g, torch.tensor(0.0))), _const(g, torch.tensor(128.0)))
        zp = g.op("Cast", shift, to_i=2)  # UINT8 128s, (M,)
        xq = g.op("QuantizeLinear", x, flat, zp, axis_i=0)
        acc = g.op("MatMulInteger", xq, w_t, _const(g, torch.tensor(128, dtype=torch.uint8)))
        # Per-column weight scale first, per-row activation scale after: ONNX Runtime fuses
        # MatMulInteger+Cast+Mul into MatMulIntegerToFloat, which reads a (M, 1) scale wrongly.
        y = g.op("Mul", g.op("Mul", g.op("Cast", acc, to_i=1), w_scale), a_scale)
        return g.op("Add", y, bias)


class MatMulNBits(Function):
    """Block-wise 4/8-bit weight-only matmul: ONNX Runtime's ``com.microsoft::MatMulNBits``.

    ``packed`` is ``(N, K // block, block * bits // 8)`` uint8, ``scales`` ``(N * K // block,)``,
    ``zero_points`` packed uint8 (4-bit: two per byte) or uint8 (8-bit). ``w_deq`` is the
    dequantized weight ``(N, K)`` the simulation multiplies with; the symbolic ignores it.
    """

    @staticmethod
    def forward(
        ctx, x, w_deq, packed, scales, zero_points, bias, k: int, n: int, bits: int, block: int, level: int = 0
    ):  # type: ignore[override]
        if level == 4:
            x = block_int8(x, block)
        return x @ w_deq.t() + bias

    @staticmethod
    def symbolic(g, x, w_deq, packed, scales, zero_points, bias, k: int, n: int, bits: int, block: int, level: int = 0):
        y = g.op(
            "com.microsoft::MatMulNBits",
            x,
            packed,
            scales,
            zero_points,
            K_i=k,
            N_i=n,
            bits_i=bits,
            block_size_i=block,
            accuracy_level_i=level,
        )
        return g.op("Add", y, bias)


def block_int8(x: torch.Tensor, block: int) -> torch.Tensor:
    """``x (M, K)`` quantized to int8 and back per row and block of ``block`` inputs, as ONNX Runtime's
    MatMulNBits does at accuracy_level=4 before its int8 dot products (MLAS ``QuantizeARow_CompInt8``):
    scale ``max|x| / 127`` per block, ``round(x * (127 / max|x|))`` half to even; measured equal to
    ONNX Runtime's output to float rounding (``tests/llm/test_int8_compute.py``)."""
    m, k = x.shape
    xb = x.reshape(m, k // block, block)
    amax = xb.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    scale = amax / 127.0
    return (torch.round(xb * inv) * scale).reshape(m, k)
