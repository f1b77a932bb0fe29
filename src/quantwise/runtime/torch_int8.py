"""Real PyTorch int8 execution on the CPU (x86/fbgemm kernels), lowered from the QuantizedModel.

- dynamic INT8 Linear: ``quantized::linear_dynamic`` (8-bit activations, no reduced range);
- static INT8 Conv2d/Linear: ``quantized::conv2d(_relu)`` / ``quantized::linear(_relu)`` with the
  stored input and output parameters; a Linear without output quantization uses
  ``quantized::linear_with_input_q_dq_qweight_dq_output_fp32``.

Weight-only formats are not offered: ``torch._weight_int8pack_mm`` ran MiniLM 30x slower than
FP32 on this machine (956 ms vs 31 ms at batch 1), so it is no kernel anyone should deploy.

Each layer quantizes its float input with the *stored* scale and zero point and hands back
float, so the float parts of the model (softmax, LayerNorm ...) are untouched. Anything else
has no PyTorch CPU kernel here and is refused with the reason.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantwise.errors import UnsupportedModel
from quantwise.nnutil import set_module
from quantwise.numerics.granularity import PerTensor
from quantwise.quantized import LayerQuant, QuantizedModel, apply_activation, drop_fused_activations
from quantwise.runtime.base import RuntimeSpec, load_exported, saturating_weights
from quantwise.runtime.qmodules import qdq
from quantwise.transform.act_points import insert_points


@contextlib.contextmanager
def x86_engine() -> Iterator[None]:
    """PyTorch's x86 quantized engine while packing and running our layers; the caller's engine after."""
    before = torch.backends.quantized.engine
    want = "x86" if "x86" in torch.backends.quantized.supported_engines else "fbgemm"
    if before == want:
        yield
        return
    torch.backends.quantized.engine = want
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


def _qweight(lq: LayerQuant) -> torch.Tensor:
    w = lq.weight_q.to(torch.int8)
    if isinstance(lq.weight_granularity, PerTensor):
        return torch._make_per_tensor_quantized_tensor(w, float(lq.weight_scale), int(lq.weight_zero_point))
    return torch._make_per_channel_quantized_tensor(
        w, lq.weight_scale.reshape(-1).double(), lq.weight_zero_point.reshape(-1).long(), 0
    )


class Int8Linear(nn.Module):
    """A Linear executed by PyTorch's int8 CPU kernels."""

    def __init__(self, lq: LayerQuant, layer: nn.Linear) -> None:
        super().__init__()
        self.k, self.n, self.mode = layer.in_features, layer.out_features, lq.mode
        bias = layer.bias.detach().float() if layer.bias is not None else None
        self.lq_in, self.lq_out, self.act = lq.input, lq.output, lq.activation
        self.relu = self.act == "relu"  # PyTorch fuses ReLU into its int8 kernels; ReLU6 is clamped after
        self.packed = torch.ops.quantized.linear_prepack(_qweight(lq), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., K)
        with x86_engine():
            return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.k).contiguous()
        if self.mode == "dynamic":
            y = torch.ops.quantized.linear_dynamic(x2, self.packed, False)
        elif self.lq_out is None:
            assert self.lq_in is not None  # a static layer always has its input quantization
            y = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
                x2, self.lq_in.scale, self.lq_in.zero_point, self.packed
            )
            y = apply_activation(y, self.act)
        else:
            assert self.lq_in is not None
            xq = torch.quantize_per_tensor(x2, self.lq_in.scale, self.lq_in.zero_point, torch.quint8)
            op = torch.ops.quantized.linear_relu if self.relu else torch.ops.quantized.linear
            y = op(xq, self.packed, self.lq_out.scale, self.lq_out.zero_point).dequantize()
            y = apply_activation(y, "relu6") if self.act == "relu6" else y
        return y.reshape(*lead, self.n)


class Int8Conv2d(nn.Module):
    """A static INT8 Conv2d executed by PyTorch's int8 CPU kernels."""

    def __init__(self, lq: LayerQuant, layer: nn.Conv2d) -> None:
        super().__init__()
        assert lq.input is not None and lq.output is not None
        bias = layer.bias.detach().float() if layer.bias is not None else None
        self.packed = torch.ops.quantized.conv2d_prepack(
            _qweight(lq), bias, list(layer.stride), list(layer.padding), list(layer.dilation), layer.groups
        )
        self.lq_in, self.lq_out, self.act = lq.input, lq.output, lq.activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        xq = torch.quantize_per_tensor(x.contiguous(), self.lq_in.scale, self.lq_in.zero_point, torch.quint8)
        op = torch.ops.quantized.conv2d_relu if self.act == "relu" else torch.ops.quantized.conv2d
        with x86_engine():
            y = op(xq, self.packed, self.lq_out.scale, self.lq_out.zero_point).dequantize()
        return apply_activation(y, "relu6") if self.act == "relu6" else y


class Int8Embedding(nn.Module):
    """An int8 embedding table (one scale per row): rows are gathered, then scaled."""

    def __init__(self, lq: LayerQuant, layer: nn.Embedding) -> None:
        super().__init__()
        self.register_buffer("w", lq.weight_q.to(torch.int8).contiguous())  # (V, D)
        self.register_buffer("s", lq.weight_scale.reshape(-1, 1).float())  # (V, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, S) -> (B, S, D)
        w, s = self.get_buffer("w"), self.get_buffer("s")
        return w[ids].to(torch.float32) * s[ids]


def why_not_int8(qm: QuantizedModel | None) -> str | None:
    """None when every quantized layer has a PyTorch int8 kernel here, else the reason."""
    if qm is None:
        return "torch-int8 runs quantized models; FP32 is measured in the torch runtime"
    if qm.plan is not None:
        return "fixed point has no PyTorch int8 kernel lowering: use --runtime integer, torch or onnxruntime"
    if qm.cast:
        return f"{qm.cast} is a float cast: no int8 kernels (run it with --runtime torch)"
    if not any(lq.kind != "embedding" for lq in qm.layers.values()):
        return "no quantized Linear or Conv2d layers"
    for name, lq in qm.layers.items():
        if lq.weight_qtype != "int8":
            return f"{name}: {lq.weight_qtype} weights have no PyTorch int8 kernel (use --runtime onnxruntime for MatMulNBits)"
        if lq.kind == "embedding":
            continue
        if lq.mode == "dynamic" and lq.dynamic_granularity != "per-tensor":
            return (
                f"{name}: PyTorch's dynamic int8 kernel quantizes activations per tensor, not {lq.dynamic_granularity}"
            )
        if lq.mode == "weight_only":
            return f"{name}: weight-only formats have no fast PyTorch CPU kernel here (use --runtime onnxruntime)"
        if lq.mode == "static" and (
            (lq.input and lq.input.qtype != "uint8") or (lq.output and lq.output.qtype != "uint8")
        ):
            return f"{name}: PyTorch's x86 int8 kernels take uint8 activations; drop --symmetric-activations"
        if lq.mode == "static" and lq.kind == "conv2d" and lq.output is None:
            return f"{name}: a static Conv2d needs output quantization"
    return saturating_weights(qm)


def lower_torch_int8(qm: QuantizedModel) -> nn.Module:
    """The model with every quantized layer replaced by its PyTorch int8 kernel module."""
    reason = why_not_int8(qm)
    if reason:
        raise UnsupportedModel(f"torch-int8 cannot run this model: {reason}")
    # the adds and max-pools quantized between layers: quantize -> dequantize around a float add
    model = insert_points(copy.deepcopy(qm.model).eval(), qm.activations, qdq)
    with x86_engine():  # weights are packed for the engine the layers run under
        for name, lq in qm.layers.items():
            layer = model.get_submodule(name)
            cls = {"conv2d": Int8Conv2d, "linear": Int8Linear, "embedding": Int8Embedding}[lq.kind]
            set_module(model, name, cls(lq, layer))
        drop_fused_activations(model, qm.layers)
    return model


def _lower(
    qm: QuantizedModel, task: Any, workdir: Path, threads: int, batch_sizes: Any = (1,)
) -> tuple[Any, nn.Module]:
    from quantwise.runtime.torch_rt import TorchRunner

    module = lower_torch_int8(qm)
    return TorchRunner(module, qm.save(workdir / "quantized"), threads, runtime="torch-int8"), module


def _how(qm: QuantizedModel | None) -> tuple[str, str]:
    return "quantized/", (
        "quantwise.QuantizedModel.load('quantized', model=<fresh float model>) then "
        "quantwise.runtime.torch_int8.lower_torch_int8(qm)"
    )


def _load(folder: Path, task: Any, threads: int = 1) -> Any:
    from quantwise.runtime.torch_rt import TorchRunner

    qm = load_exported(folder, task)
    return TorchRunner(lower_torch_int8(qm), folder / "quantized", threads, runtime="torch-int8")


SPEC = RuntimeSpec(
    name="torch-int8",
    help="PyTorch's x86 int8 kernels (quantized::linear_dynamic, quantized::conv2d/linear) for dynamic and static INT8",
    baseline="torch",
    colour="#8e44ad",
    why_not=why_not_int8,
    lower=_lower,
    how_to_load=_how,
    load=_load,
)
