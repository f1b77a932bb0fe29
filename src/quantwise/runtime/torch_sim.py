"""Lowering to PyTorch: the simulation module for a QuantizedModel."""

from __future__ import annotations

import copy

import torch
from torch import nn

from quantwise.errors import Unsupported
from quantwise.nnutil import set_module
from quantwise.quantized import QuantizedModel
from quantwise.runtime.kvcache import use_kv_int8
from quantwise.runtime.qmodules import CastModel, QConv2d, QEmbedding, QLinear
from quantwise.transform.registry import Batch

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


def check_layer_shapes(model: nn.Module, qm: QuantizedModel, batch: Batch) -> None:
    """Every quantized layer of the simulation gives its float layer's output shape on ``batch``;
    a layer that would not is a one-line error naming it, never a silently different model."""
    if qm.plan is not None or qm.cast or getattr(model, "is_onnx_graph", False) or not qm.layers:
        return
    failed: list[str] = []

    def shapes(m: nn.Module) -> dict[str, tuple[int, ...]]:
        seen: dict[str, tuple[int, ...]] = {}  # filled in the order the layers run
        hooks = []
        for name in qm.layers:
            try:
                mod = m.get_submodule(name)
            except AttributeError:
                continue

            def hook(_m: nn.Module, _a: tuple, out: object, name: str = name) -> None:
                if isinstance(out, torch.Tensor):
                    seen.setdefault(name, tuple(out.shape))

            hooks.append(mod.register_forward_hook(hook))
        try:
            with torch.no_grad():
                m(*batch)
        except Exception as e:  # a wrong shape usually breaks what reads it: the layers seen so far say which
            failed.append((str(e).strip().splitlines() or [type(e).__name__])[0][:160])
        finally:
            for h in hooks:
                h.remove()
        return seen

    want = shapes(model)
    if failed:
        return  # the float model itself fails on this batch: check_task reports that, not this guard
    got = shapes(lower_torch(qm))
    for name, shape in got.items():
        if name in want and want[name] != shape:
            raise Unsupported(
                f"{name}: the quantized layer gives shape {shape} where the float layer gives {want[name]}: "
                "it would change what the model computes; --exclude it"
            )
    if failed:
        raise Unsupported(f"the quantized model fails on a calibration batch where the float model runs: {failed[0]}")
