"""Modules that replace quantized layers; their forward is the simulation, their export the ONNX graph.

Each module is built from one :class:`~quantwise.quantized.LayerQuant` and the float layer it
replaces (for stride, padding, and the float bias of non-static layers). It never recomputes a
quantization parameter: static layers read their int32 bias and its scale (``s_in * s_w``) from
the LayerQuant, where :func:`~quantwise.numerics.quantize_bias` computed it once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quantwise.errors import UnsupportedModel
from quantwise.numerics import get_qtype, pack_int4
from quantwise.numerics.granularity import PerGroup, PerTensor
from quantwise.numerics.packing import nbits_block_ok, pack_matmul_nbits
from quantwise.quantized import ActGranularity, ActQuant, LayerQuant, apply_activation
from quantwise.runtime.qfunctions import (
    DQ,
    QDQ,
    DynamicQMatMul,
    DynamicQMatMulPerToken,
    GatherBlockDQ,
    GatherDQ,
    GatherNBits,
    HalfToFloat,
    MatMulNBits,
)


def qdq(x: torch.Tensor, a: ActQuant) -> torch.Tensor:
    qt = get_qtype(a.qtype)
    return QDQ.apply(x, float(a.scale), int(a.zero_point), qt.signed, qt.bits)


class _QLayer(nn.Module):
    """Shared set-up: integer weight buffers in the ONNX-friendly dtypes."""

    def __init__(self, lq: LayerQuant, layer: nn.Conv2d | nn.Linear) -> None:
        super().__init__()
        self.mode = lq.mode
        self.input_q = lq.input
        self.output_q = lq.output
        self.act = lq.activation
        qt = get_qtype(lq.weight_qtype)
        self.per_group = isinstance(lq.weight_granularity, PerGroup)
        self.bits = qt.bits
        self.register_buffer("w_q", lq.weight_q.to(qt.torch_dtype).contiguous())
        self.register_buffer(
            "w_scale",
            lq.weight_scale.to(torch.float32).reshape(-1)
            if not isinstance(lq.weight_granularity, PerTensor)
            else lq.weight_scale.to(torch.float32).reshape(()),
        )
        self.register_buffer("w_zp", lq.weight_zero_point.to(qt.torch_dtype).reshape(self.w_scale.shape))
        bias = layer.bias.detach().clone() if layer.bias is not None else torch.zeros(lq.weight_q.shape[0])
        self.register_buffer("bias", bias.to(torch.float32))
        if self.mode == "static":
            assert lq.input is not None
            if lq.bias_q is None or lq.bias_scale is None:
                lq.set_int32_bias(layer.bias)  # a LayerQuant built outside a QuantizedModel
            assert lq.bias_q is not None and lq.bias_scale is not None
            self.register_buffer("b_q", lq.bias_q.to(torch.int32).contiguous())  # read, never re-derived
            self.register_buffer("b_scale", lq.bias_scale.to(torch.float32).contiguous())
            self.register_buffer("b_zp", torch.zeros(bias.shape, dtype=torch.int32))
        self.w_float: torch.Tensor | None = None

    def disable_quantizers(self, weight: torch.Tensor) -> None:
        """Compute in float with ``weight`` (the float layer's): every structural step of this module
        (its convolution parameters, flattening, fused activation) stays, every quantizer goes. The
        fidelity guard compares this with the float model."""
        self.w_float = weight.detach().to(torch.float32)
        self.mode, self.input_q, self.output_q = "float", None, None

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized float weight: parents that read ``layer.weight`` (its dtype, its shape:
        transformers' ViT patch embedding does) see what the layer computes with."""
        if self.w_float is not None:
            return self.w_float
        if self.w_q.dtype == torch.float16:
            return self.w_q.to(torch.float32)
        return DQ.apply(self.w_q, self.w_scale, self.w_zp, 0)

    def _weight(self, like: torch.Tensor) -> torch.Tensor:
        if self.w_float is not None:
            return self.w_float
        if self.w_q.dtype == torch.float16:  # fp16 storage, float32 arithmetic
            return HalfToFloat.apply(self.w_q, like)
        return DQ.apply(self.w_q, self.w_scale, self.w_zp, 0)

    def _bias(self) -> torch.Tensor:
        if self.mode == "static":
            return DQ.apply(self.b_q, self.b_scale, self.b_zp, 0)
        return self.bias

    def _finish(self, y: torch.Tensor) -> torch.Tensor:
        y = apply_activation(y, self.act)
        if self.output_q is not None:
            y = qdq(y, self.output_q)
        return y


class QConv2d(_QLayer):
    """Conv2d with per-channel (or per-tensor) integer weights; static or weight-only."""

    def __init__(self, lq: LayerQuant, layer: nn.Conv2d) -> None:
        super().__init__(lq, layer)
        self.stride, self.padding, self.dilation, self.groups = (
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.groups,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        if self.input_q is not None:
            x = qdq(x, self.input_q)
        y = F.conv2d(x, self._weight(x), self._bias(), self.stride, self.padding, self.dilation, self.groups)
        return self._finish(y)


class QLinear(_QLayer):
    """Linear with integer weights. Inputs of any rank are flattened to ``(M, K)`` first,
    so every mode lowers to one 2-D pattern (Gemm, MatMulInteger or MatMulNBits)."""

    def __init__(self, lq: LayerQuant, layer: nn.Linear) -> None:
        super().__init__(lq, layer)
        self.k, self.n = layer.in_features, layer.out_features
        self.per_token = lq.dynamic_granularity == "per-token"
        if self.mode == "dynamic":
            self.register_buffer("w_t", self.w_q.t().contiguous())  # (K, N) int8
        g = lq.weight_granularity
        block = g.size if isinstance(g, PerGroup) else self.k
        self.level = 4 if lq.dynamic_granularity == ActGranularity.PER_BLOCK else 0  # int8 compute
        if self.mode == "weight_only" and (self.per_group or self.bits == 4) and nbits_block_ok(block, self.k):
            self._init_nbits(lq)
        elif self.level:
            raise UnsupportedModel(
                f"int8 compute needs MatMulNBits blocks: a layer with {self.k} inputs and weight block {block} has none "
                "(use a group size of 16-256 that divides the inputs)"
            )

    def _init_nbits(self, lq: LayerQuant) -> None:
        g = lq.weight_granularity
        block = g.size if isinstance(g, PerGroup) else self.k
        self.block = block
        qt = get_qtype(lq.weight_qtype)
        packed, zp_packed = pack_matmul_nbits(lq.weight_q, lq.weight_zero_point, qt.bits, qt.signed, block)
        self.register_buffer("nb_packed", packed.contiguous())
        self.register_buffer("nb_scales", lq.weight_scale.to(torch.float32).reshape(-1).contiguous())
        self.register_buffer("nb_zp", zp_packed)
        self.register_buffer("w_deq", lq.dequantized_weight().to(torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., K)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.k)  # (M, K)
        if self.mode == "dynamic":
            fn = DynamicQMatMulPerToken if self.per_token else DynamicQMatMul
            y = fn.apply(x2, self.w_t, self.w_scale, self.bias)
        elif hasattr(self, "nb_packed") and self.w_float is None:
            y = MatMulNBits.apply(
                x2,
                self.w_deq,
                self.nb_packed,
                self.nb_scales,
                self.nb_zp,
                self.bias,
                self.k,
                self.n,
                self.bits,
                self.block,
                self.level,
            )
        else:
            if self.input_q is not None:
                x2 = qdq(x2, self.input_q)
            y = F.linear(x2, self._weight(x2), self._bias())
        y = self._finish(y)
        return y.reshape(*lead, self.n)


class QEmbedding(nn.Module):
    """An embedding table stored as int8 with one symmetric scale per row, or as int4 with one
    scale per block of 32 in a row; rows are gathered, then scaled."""

    def __init__(self, lq: LayerQuant, layer: nn.Embedding) -> None:
        super().__init__()
        self.register_buffer("w_q", lq.weight_q.to(torch.int8).contiguous())  # (V, D)
        self.block = lq.weight_granularity.size if isinstance(lq.weight_granularity, PerGroup) else 0
        if self.block:
            v, d = lq.weight_q.shape
            self.register_buffer("w_scale", lq.weight_scale.to(torch.float32).reshape(v, d // self.block))
            u = (lq.weight_q.to(torch.int16) + 8).to(torch.uint8)  # signed int4 as unsigned with zero point 8
            self.register_buffer("packed", pack_int4(u.reshape(-1)).reshape(v, d // 2))
            nblk = d // self.block
            zp = torch.full((v, nblk + nblk % 2), 8, dtype=torch.uint8)
            self.register_buffer("zp", pack_int4(zp.reshape(-1)).reshape(v, -1))
        else:
            self.register_buffer("w_scale", lq.weight_scale.to(torch.float32).reshape(-1))  # (V,)
        self.w_float: torch.Tensor | None = None

    def disable_quantizers(self, weight: torch.Tensor) -> None:
        """Gather rows of ``weight`` (the float table) instead: the fidelity guard's float twin."""
        self.w_float = weight.detach().to(torch.float32)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, S) -> (B, S, D)
        if self.w_float is not None:
            return F.embedding(ids, self.w_float)
        if self.block:
            return GatherBlockDQ.apply(ids, self.w_q, self.w_scale, self.packed, self.zp, self.block)
        return GatherDQ.apply(ids, self.w_q, self.w_scale)


class TiedGather(nn.Module):
    """An embedding whose table *is* a quantized LM head's weight (tied): its rows are gathered
    from the head's own integer weights (``MatMulNBits`` bytes through ``GatherBlockQuantized``,
    or the int8 rows of a dynamic head through ``GatherDQ``), never from a float copy, so the
    exported graph stores the table once. Computes what the float copy did: the head's
    dequantized rows."""

    def __init__(self, head: QLinear) -> None:
        super().__init__()
        self.nbits = hasattr(head, "nb_packed")
        if self.nbits:
            v = head.n
            self.bits, self.block = head.bits, head.block
            self.register_buffer("w_deq", head.w_deq)
            self.register_buffer("packed", head.nb_packed.reshape(v, -1))
            self.register_buffer("scales", head.nb_scales.reshape(v, -1))
            self.register_buffer("zp", head.nb_zp.reshape(v, -1))
        else:
            self.register_buffer("w_q", head.w_q)  # (V, D) int8, symmetric
            self.register_buffer("w_scale", head.w_scale.expand(head.n).contiguous())  # one scale per row

    @staticmethod
    def supports(head: QLinear) -> bool:
        """A head this can gather from: MatMulNBits weights, or dynamic int8 symmetric ones."""
        return hasattr(head, "nb_packed") or (
            head.mode == "dynamic" and head.w_q.dtype == torch.int8 and not bool(head.w_zp.any())
        )

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized table (callers that read ``embedding.weight``: its dtype, its shape)."""
        if self.nbits:
            return self.w_deq
        return self.w_q.to(torch.float32) * self.w_scale.unsqueeze(1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, S) -> (B, S, D)
        if self.nbits:
            return GatherNBits.apply(ids, self.w_deq, self.packed, self.scales, self.zp, self.bits, self.block)
        return GatherDQ.apply(ids, self.w_q, self.w_scale)


class CastModel(nn.Module):
    """Runs a model cast to fp16/bf16: float inputs are cast in, outputs cast back to float32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model.to(dtype)
        self.dtype = dtype

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        args = tuple(a.to(self.dtype) if a.is_floating_point() else a for a in args)
        return self.model(*args).to(torch.float32)
