"""Lowering to PyTorch: the simulation module for a QuantizedModel."""

from __future__ import annotations

import copy

import torch
from torch import nn

from quantwise.nnutil import set_module
from quantwise.quantized import QuantizedModel
from quantwise.runtime.kvcache import use_kv_int8
from quantwise.runtime.qmodules import CastModel, QConv2d, QEmbedding, QLinear

_CAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


def lower_torch(qm: QuantizedModel) -> nn.Module:
    """A new module computing what the QuantizedModel says (the fake-quant simulation).

    Quantized layers become :class:`QLinear`/:class:`QConv2d`; a ReLU fused into a layer's
    output quantization becomes ``nn.Identity``. ``qm.model`` is left untouched.
    """
    model = copy.deepcopy(qm.model).eval()
    for name, lq in qm.layers.items():
        layer = model.get_submodule(name)
        new = {"conv2d": QConv2d, "linear": QLinear, "embedding": QEmbedding}[lq.kind](lq, layer)
        set_module(model, name, new)
        if lq.fused_relu:
            set_module(model, lq.fused_relu, nn.Identity())
    if getattr(qm.recipe, "kv_cache", "float") == "int8":
        use_kv_int8(model)
    if qm.cast:
        return CastModel(model, _CAST[qm.cast]).eval()
    return model
