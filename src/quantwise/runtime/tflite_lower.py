"""Lowering a QuantizedModel to a module litert-torch converts to ``.tflite`` with *our* parameters.

litert-torch turns PT2E-style ``quantized_decomposed`` quantize/dequantize pairs into TFLite
quantized tensors, taking the scales and zero points from the graph. So every quantized tensor
here is written as such a pair carrying the QuantizedModel's own numbers:

* static layers: input and output activations per tensor, weights per channel; TFLite's
  integer kernels use int8 activations, so a uint8 grid ``(s, z)`` is written as the identical
  int8 grid ``(s, z - 128)``; the int32 bias scale ``s_in * s_w`` is TFLite's rule and ours;
* dynamic layers: per-channel int8 weights; the converter's dynamic-range kernels quantize
  activations themselves at run time (TFLite computes those ranges, not quantwise);
* weight-only int8: per-channel int8 weights stored in the file, dequantized to float;
* int8 embedding tables: one symmetric scale per row;
* fp16: weights stored as float16 constants, cast to float32 (TFLite's float16 scheme).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from quantwise.errors import UnsupportedModel
from quantwise.nnutil import set_module
from quantwise.numerics import get_qtype
from quantwise.numerics.granularity import PerChannel, PerTensor
from quantwise.quantized import ActQuant, LayerQuant, QuantizedModel, apply_activation, drop_fused_activations
from quantwise.transform.act_points import insert_points


def _ops():
    import torch.ao.quantization.fx._decomposed

    return torch.ops.quantized_decomposed


def int8_grid(a: ActQuant) -> tuple[float, int]:
    """The int8 grid equal to ``a``'s grid (uint8 zero point z becomes z - 128)."""
    z = int(a.zero_point) - (0 if get_qtype(a.qtype).signed else 128)
    return float(a.scale), z


def _qdq_act(x: torch.Tensor, a: ActQuant) -> torch.Tensor:
    qd = _ops()
    s, z = int8_grid(a)
    q = qd.quantize_per_tensor.default(x, s, z, -128, 127, torch.int8)
    return qd.dequantize_per_tensor.default(q, s, z, -128, 127, torch.int8)


class _TfliteLayer(nn.Module):
    """A quantized Conv2d/Linear written with quantize/dequantize pairs."""

    def __init__(self, lq: LayerQuant, layer: nn.Module) -> None:
        super().__init__()
        if get_qtype(lq.weight_qtype).bits != 8 and lq.mode != "static":
            raise UnsupportedModel(
                f"{lq.weight_qtype} weights have no TFLite kernel outside static W4A8 (int4 values in int8): "
                "use --runtime onnxruntime (MatMulNBits)"
            )
        if not isinstance(lq.weight_granularity, (PerChannel, PerTensor)):
            raise UnsupportedModel(
                "per-group weight scales have no TFLite kernel here: use --runtime onnxruntime (MatMulNBits)"
            )
        self.lq, self.kind = lq, lq.kind
        self.register_buffer("w", lq.dequantized_weight().to(torch.float32).reshape(layer.weight.shape))
        n = layer.weight.shape[0]
        s = lq.weight_scale.to(torch.float32).reshape(-1)
        self.register_buffer("w_scale", s.expand(n).contiguous() if s.numel() == 1 else s)
        self.register_buffer("w_zp", torch.zeros(n, dtype=torch.int64))
        self.register_buffer("b", layer.bias.detach().clone() if layer.bias is not None else torch.zeros(n))
        self.act = lq.activation
        if self.kind == "conv2d":
            self.stride, self.padding, self.dilation, self.groups = (
                layer.stride,
                layer.padding,
                layer.dilation,
                layer.groups,
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qd = _ops()
        if self.lq.mode == "static" and self.lq.input is not None:
            x = _qdq_act(x, self.lq.input)
        wq = qd.quantize_per_channel.default(self.w, self.w_scale, self.w_zp, 0, -128, 127, torch.int8)
        w = qd.dequantize_per_channel.default(wq, self.w_scale, self.w_zp, 0, -128, 127, torch.int8)
        if self.kind == "conv2d":
            y = F.conv2d(x, w, self.b, self.stride, self.padding, self.dilation, self.groups)
        else:
            y = F.linear(x, w, self.b)
        y = apply_activation(y, self.act)
        if self.lq.mode == "static" and self.lq.output is not None:
            y = _qdq_act(y, self.lq.output)
        return y


class _TfliteEmbedding(nn.Module):
    """An int8 table, one symmetric scale per row, gathered then dequantized."""

    def __init__(self, lq: LayerQuant) -> None:
        super().__init__()
        if get_qtype(lq.weight_qtype).bits != 8:
            raise UnsupportedModel(
                "int4 embedding tables (blocks of 32) have no TFLite kernel here: use --runtime onnxruntime"
            )
        self.register_buffer("w", lq.dequantized_weight().to(torch.float32))
        self.register_buffer("w_scale", lq.weight_scale.to(torch.float32).reshape(-1))
        self.register_buffer("w_zp", torch.zeros(self.w_scale.shape, dtype=torch.int64))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        qd = _ops()
        wq = qd.quantize_per_channel.default(self.w, self.w_scale, self.w_zp, 0, -128, 127, torch.int8)
        return F.embedding(
            ids, qd.dequantize_per_channel.default(wq, self.w_scale, self.w_zp, 0, -128, 127, torch.int8)
        )


class _Fp16Weights(nn.Module):
    """Runs ``model`` with every float parameter stored as float16 and cast back to float32."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.names = [n for n, p in model.named_parameters() if p.is_floating_point()]
        for i, n in enumerate(self.names):
            self.register_buffer(f"h{i}", model.get_parameter(n).detach().to(torch.float16))

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        params = {n: getattr(self, f"h{i}").to(torch.float32) for i, n in enumerate(self.names)}
        return torch.func.functional_call(self.model, params, args)


def why_not_tflite(qm: QuantizedModel | None) -> str | None:
    """Why LiteRT cannot run ``qm`` with quantwise's own numbers, or None."""
    if qm is None:
        return None
    if qm.plan is not None:
        return "fixed point runs in the integer runtime (or onnxruntime); its TFLite lowering is not built"
    if qm.cast == "bf16":
        return "bf16 has no TFLite CPU kernels: run bf16 with --runtime torch"
    for name, lq in qm.layers.items():
        if lq.mode == "weight_only" and lq.kind != "embedding":
            return (
                "LiteRT has no weight-only int8 path that keeps quantwise's scales (the converter folds such weights "
                "back to float): use dynamic-int8 (dynamic range) or static-int8 with --runtime tflite"
            )
        if lq.kind == "embedding" and get_qtype(lq.weight_qtype).bits != 8:
            return "int4 embedding tables (blocks of 32) have no TFLite kernel here: use --runtime onnxruntime"
        if lq.kind != "embedding" and get_qtype(lq.weight_qtype).bits != 8 and lq.mode != "static":
            return (
                f"{name}: {lq.weight_qtype} weights have no TFLite kernel outside static W4A8 (int4 values in int8): "
                "use --runtime onnxruntime (MatMulNBits)"
            )
        if lq.kind != "embedding" and not isinstance(lq.weight_granularity, (PerChannel, PerTensor)):
            return (
                f"{name}: per-group weight scales have no TFLite kernel here: use --runtime onnxruntime (MatMulNBits)"
            )
        if lq.mode == "dynamic" and lq.dynamic_granularity != "per-tensor":
            return f"{name}: LiteRT's dynamic-range kernels quantize activations with their own ranges, not {lq.dynamic_granularity}"
    return None


def lower_tflite_module(qm: QuantizedModel | None, model: nn.Module) -> tuple[nn.Module, str]:
    """The module to convert and the converter mode: ``none``, ``static`` or ``dynamic``."""
    if qm is None:
        return copy.deepcopy(model).eval(), "none"
    reason = why_not_tflite(qm)
    if reason:
        raise UnsupportedModel(reason)
    if qm.cast == "fp16":
        return _Fp16Weights(copy.deepcopy(qm.model).eval()).eval(), "none"
    out = insert_points(copy.deepcopy(qm.model).eval(), qm.activations, _qdq_act)
    modes = set()
    for name, lq in qm.layers.items():
        if lq.kind == "embedding":
            set_module(out, name, _TfliteEmbedding(lq))
            continue
        set_module(out, name, _TfliteLayer(lq, out.get_submodule(name)))
        modes.add(lq.mode)
    drop_fused_activations(out, qm.layers)
    mode = "static" if "static" in modes else ("dynamic" if "dynamic" in modes else "static")
    return out.eval(), mode
