"""Real PyTorch int8 execution on the CPU, lowered from the QuantizedModel.

The kernels are oneDNN's ``torch.ops.onednn.qlinear_pointwise`` / ``qconv2d_pointwise``: the ops
PyTorch's x86 Inductor quantizer (torchao's PT2E flow) lowers quantized Linear and Conv2d to.
They take plain ``uint8`` activations and ``int8`` weights with the QuantizedModel's own scales
and zero points, so no ``torch.ao.quantization`` code and no quantized tensor types
(``torch.quantize_per_tensor`` is deprecated, pytorch/pytorch#184982) are involved:

- static INT8 Conv2d/Linear: the input is quantized with the stored scale and zero point, the
  kernel requantizes to the stored output parameters (ReLU fused), or returns float for a
  Linear without output quantization;
- dynamic INT8 Linear: the activation parameters are chosen at run time by the simulation's own
  rule (per tensor uint8, or per token symmetric int8), the kernel accumulates in int32.

Weight-only formats are not offered: ``torch._weight_int8pack_mm`` ran MiniLM 30x slower than
FP32 on this machine (956 ms vs 31 ms at batch 1), so it is no kernel anyone should deploy.

Each layer hands back float, so the float parts of the model (softmax, LayerNorm ...) are
untouched. Anything else has no PyTorch CPU kernel here and is refused with the reason.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantwise.errors import UnsupportedModel
from quantwise.nnutil import set_module
from quantwise.quantized import ActQuant, LayerQuant, QuantizedModel, apply_activation, drop_fused_activations
from quantwise.runtime.base import RuntimeSpec, load_exported, saturating_weights
from quantwise.runtime.qmodules import qdq
from quantwise.transform.act_points import insert_points

_ONEDNN = torch.ops.onednn


def _u8(x: torch.Tensor, scale: float, zero_point: float) -> torch.Tensor:
    """``x`` quantized to uint8 as the simulation does: ``round(x / scale) + zero_point``, clamped
    (in place on one temporary: these passes, not the kernels, are what this runtime adds to FP32)."""
    return (x / scale).round_().add_(zero_point).clamp_(0, 255).to(torch.uint8)


def _act_u8(x: torch.Tensor, a: ActQuant) -> torch.Tensor:
    return _u8(x, float(a.scale), int(a.zero_point))


def _dequant(yq: torch.Tensor, a: ActQuant) -> torch.Tensor:
    """``(q - zero_point) * scale`` in float32, as the simulation computes it."""
    return yq.to(torch.float32).sub_(int(a.zero_point)).mul_(float(a.scale))


def _channel_scales(lq: LayerQuant, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One float32 weight scale per output channel, and their (zero) zero points."""
    return lq.weight_scale.reshape(-1).to(torch.float32).expand(n).contiguous(), torch.zeros(n, dtype=torch.int64)


def _int8_weight(lq: LayerQuant) -> torch.Tensor:
    return lq.weight_q.to(torch.int8).contiguous()


class _Weighted(nn.Module):
    """Parents may read ``layer.weight`` (its dtype, its shape: transformers' ViT patch embedding does):
    they get the dequantized weight this layer computes with, from the QuantizedModel's own int8 values
    (no second copy is kept)."""

    def __init__(self, lq: LayerQuant) -> None:
        super().__init__()
        self._lq = lq

    @property
    def weight(self) -> torch.Tensor:
        return self._lq.dequantized_weight().to(torch.float32)

    def _pack(self) -> torch.Tensor:
        raise NotImplementedError

    def __getstate__(self) -> dict[str, Any]:
        """oneDNN's packed weight is an opaque tensor that cannot be pickled (``torch.save`` of the lowered
        model, as the peak-memory measurement does): it is left out and packed again on load."""
        state = self.__dict__.copy()
        state.pop("packed", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.packed = self._pack()


class Int8Linear(_Weighted):
    """A Linear executed by oneDNN's int8 kernel."""

    def __init__(self, lq: LayerQuant, layer: nn.Linear) -> None:
        super().__init__(lq)
        self.k, self.n, self.mode = layer.in_features, layer.out_features, lq.mode
        self.per_token = lq.dynamic_granularity == "per-token"
        self.bias = layer.bias.detach().float() if layer.bias is not None else None
        self.lq_in, self.lq_out, self.act = lq.input, lq.output, lq.activation
        self.w_scale, self.w_zp = _channel_scales(lq, self.n)
        self.packed = self._pack()

    def _pack(self) -> torch.Tensor:
        return _ONEDNN.qlinear_prepack(_int8_weight(self._lq), None)

    def _kernel(self, xq: torch.Tensor, scale: float, zp: int, bias: torch.Tensor | None) -> torch.Tensor:
        """``(xq - zp) * scale @ W^T + bias`` in float32, accumulated in int32."""
        return _ONEDNN.qlinear_pointwise(
            xq, scale, zp, self.packed, self.w_scale, self.w_zp, bias, 1.0, 0, torch.float32, "none", [], ""
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., K)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.k).contiguous()
        if self.mode == "dynamic":
            y = self._per_token(x2) if self.per_token else self._per_tensor(x2)
        elif self.lq_out is None:
            assert self.lq_in is not None  # a static layer always has its input quantization
            y = self._kernel(_act_u8(x2, self.lq_in), float(self.lq_in.scale), int(self.lq_in.zero_point), self.bias)
            y = apply_activation(y, self.act)
        else:
            a, o = self.lq_in, self.lq_out
            assert a is not None
            post = "relu" if self.act == "relu" else "none"  # ReLU runs inside the kernel; ReLU6 is clamped after
            yq = _ONEDNN.qlinear_pointwise(
                _act_u8(x2, a), float(a.scale), int(a.zero_point), self.packed, self.w_scale, self.w_zp, self.bias,
                float(o.scale), int(o.zero_point), None, post, [], "",
            )  # fmt: skip
            y = _dequant(yq, o)
            y = apply_activation(y, "relu6") if self.act == "relu6" else y
        return y.reshape(*lead, self.n)

    def _per_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 activations over the tensor's range widened to zero (ONNX ``DynamicQuantizeLinear``),
        chosen with the simulation's float32 arithmetic."""
        lo, hi = torch.aminmax(x)
        lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
        scale = (hi - lo) / 255.0
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        zp = torch.clamp(torch.round((0.0 - lo) / scale), 0, 255)
        s, z = float(scale), int(zp)
        return self._kernel(_u8(x, s, z), s, z, self.bias)

    def _per_token(self, x: torch.Tensor) -> torch.Tensor:
        """One symmetric int8 scale per row, carried by the kernel as uint8 around zero point 128."""
        a_scale = torch.clamp(x.abs().amax(dim=1, keepdim=True) / 127.0, min=1e-12)  # (M, 1)
        xq = (x / a_scale).round_().clamp_(-128, 127).add_(128).to(torch.uint8)
        y = self._kernel(xq, 1.0, 128, None) * a_scale  # the weight scale inside, the row's after
        return y + self.bias if self.bias is not None else y


class Int8Conv2d(_Weighted):
    """A static INT8 Conv2d (grouped and depthwise included) executed by oneDNN's int8 kernel."""

    def __init__(self, lq: LayerQuant, layer: nn.Conv2d) -> None:
        super().__init__(lq)
        assert lq.input is not None and lq.output is not None
        self.bias = layer.bias.detach().float() if layer.bias is not None else None
        self.lq_in, self.lq_out, self.act = lq.input, lq.output, lq.activation
        self.geometry = (list(layer.stride), list(layer.padding), list(layer.dilation), layer.groups)
        self.w_scale, self.w_zp = _channel_scales(lq, layer.out_channels)
        self.packed = self._pack()

    def _pack(self) -> torch.Tensor:
        a = self.lq_in
        assert a is not None
        return _ONEDNN.qconv_prepack(
            _int8_weight(self._lq), self.w_scale, float(a.scale), int(a.zero_point), *self.geometry, None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        a, o = self.lq_in, self.lq_out
        assert a is not None and o is not None
        yq = _ONEDNN.qconv2d_pointwise(
            _act_u8(x, a), float(a.scale), int(a.zero_point), self.packed, self.w_scale, self.w_zp, self.bias,
            *self.geometry, float(o.scale), int(o.zero_point), None, "relu" if self.act == "relu" else "none", [], "",
        )  # fmt: skip
        y = _dequant(yq, o)
        return apply_activation(y, "relu6") if self.act == "relu6" else y


class Int8Embedding(nn.Module):
    """An int8 embedding table (one scale per row): rows are gathered, then scaled."""

    def __init__(self, lq: LayerQuant, layer: nn.Embedding) -> None:
        super().__init__()
        self.register_buffer("w", lq.weight_q.to(torch.int8).contiguous())  # (V, D)
        self.register_buffer("s", lq.weight_scale.reshape(-1, 1).float())  # (V, 1)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized table (callers that read ``embedding.weight``: its dtype, its shape)."""
        return self.get_buffer("w").to(torch.float32) * self.get_buffer("s")

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
        if lq.mode == "dynamic" and lq.dynamic_granularity not in ("per-tensor", "per-token"):
            return (
                f"{name}: oneDNN's int8 kernel takes activations per tensor or per token, not {lq.dynamic_granularity}"
            )
        if bool(lq.weight_zero_point.any()):
            return f"{name}: oneDNN's int8 kernels take symmetric weights (zero point 0); drop asymmetric weights"
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
    help="PyTorch's oneDNN int8 kernels (onednn::qlinear_pointwise, qconv2d_pointwise: what torchao's x86 PT2E flow lowers to) for dynamic and static INT8",
    baseline="torch",
    colour="#8e44ad",
    why_not=why_not_int8,
    lower=_lower,
    how_to_load=_how,
    load=_load,
)
