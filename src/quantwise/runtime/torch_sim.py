"""Lowering to PyTorch: the simulation module for a QuantizedModel."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from quantwise.errors import Unsupported
from quantwise.nnutil import set_module
from quantwise.quantized import QuantizedModel, apply_activation, drop_fused_activations
from quantwise.runtime.kvcache import use_kv_int8
from quantwise.runtime.qmodules import CastModel, QConv2d, QEmbedding, QLinear, TiedGather, qdq
from quantwise.transform.act_points import ActQDQ, insert_points
from quantwise.transform.registry import Batch

_CAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


def lower_torch(qm: QuantizedModel, quantizers: bool = True) -> nn.Module:
    """A new module computing what the QuantizedModel says (the fake-quant simulation).

    Quantized layers become :class:`QLinear`/:class:`QConv2d`; a ReLU fused into a layer's
    output quantization becomes ``nn.Identity``. ``qm.model`` is left untouched. With
    ``quantizers=False`` each replaced layer computes in float with its float weight (the
    fidelity guard's twin of the simulation: the same modules, no rounding).
    """
    model = insert_points(copy.deepcopy(qm.model).eval(), qm.activations, qdq)
    if not quantizers:
        for m in model.modules():
            if isinstance(m, ActQDQ):
                m.enabled = False
    for name, lq in qm.layers.items():
        layer = model.get_submodule(name)
        new = {"conv2d": QConv2d, "linear": QLinear, "embedding": QEmbedding}[lq.kind](lq, layer)
        if not quantizers:
            new.disable_quantizers(layer.weight)
        set_module(model, name, new)
    drop_fused_activations(model, qm.layers)
    if quantizers:
        for tied, first in dict(qm.info.get("tied_weights", {})).items():  # type: ignore[call-overload]
            emb, head = model.get_submodule(tied), model.get_submodule(first)
            if (
                type(emb) is nn.Embedding
                and emb.max_norm is None
                and isinstance(head, QLinear)
                and TiedGather.supports(head)
            ):
                set_module(model, tied, TiedGather(head))  # the table once, in the head's integer form
    if quantizers and getattr(qm.recipe, "kv_cache", "float") == "int8":
        use_kv_int8(model)
    if qm.cast and quantizers:
        return CastModel(model, _CAST[qm.cast]).eval()
    return model


FIDELITY_TOLERANCE = 1e-5  # relative to the largest magnitude of the float output it is compared with


def first_tensor(out: object) -> torch.Tensor | None:
    """The model's main output: a tensor, or the first tensor of a tuple/dict/ModelOutput."""
    if isinstance(out, torch.Tensor):
        return out
    values = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else ()
    return next((v for v in values if isinstance(v, torch.Tensor)), None)


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).abs().max()) / max(float(want.float().abs().max()), 1e-12)


def check_fidelity(qm: QuantizedModel, batch: Batch) -> None:
    """The fidelity guard, on one calibration batch: the simulation with every quantizer disabled
    (each replaced layer computing in float with the weight the float model holds, fused
    activations applied in the layer) reproduces the QuantizedModel's float model (``qm.model``:
    BatchNorm folded, the quantized weights' values) within 1e-5 relative, layer by layer and at
    the output, and every replaced layer keeps its float layer's output shape. What a swap could
    lose (a subclass's own forward, a hook, padding, a fused activation's clip) is then a one-line
    error naming the layer and what differs, never a silently different model."""
    if qm.plan is not None or qm.cast or getattr(qm.model, "is_onnx_graph", False) or not qm.layers:
        return
    failed: list[str] = []
    want: dict[str, torch.Tensor] = {}  # each layer's float output (after the activation fused into it)

    def run(m: nn.Module, hook: Callable[[str, torch.Tensor], None]) -> torch.Tensor | None:
        hooks = []
        for name in qm.layers:
            try:
                mod = m.get_submodule(name)
            except AttributeError:
                continue

            def on_out(_m: nn.Module, _a: tuple, out: object, name: str = name) -> None:
                if isinstance(out, torch.Tensor):
                    hook(name, out)

            hooks.append(mod.register_forward_hook(on_out))
        try:
            with torch.no_grad():
                return first_tensor(m(*batch))
        except Unsupported:
            raise
        except Exception as e:  # a wrong shape usually breaks what reads it: the layers seen so far say which
            failed.append((str(e).strip().splitlines() or [type(e).__name__])[0][:160])
            return None
        finally:
            for h in hooks:
                h.remove()

    def record(name: str, out: torch.Tensor) -> None:
        if name not in want:  # a shared module called twice: its first call
            want[name] = apply_activation(out, qm.layers[name].activation).detach().clone()

    ref = run(qm.model, record)
    if failed:
        return  # the float model itself fails on this batch: check_task reports that, not this guard
    seen: set[str] = set()

    def compare(name: str, out: torch.Tensor) -> None:
        if name in seen or name not in want:
            return
        seen.add(name)
        if tuple(out.shape) != tuple(want[name].shape):
            raise Unsupported(
                f"{name}: the quantized layer gives shape {tuple(out.shape)} where the float layer gives "
                f"{tuple(want[name].shape)}: it would change what the model computes; --exclude it"
            )
        rel = _rel(out, want[name])
        if rel > FIDELITY_TOLERANCE:
            raise Unsupported(
                f"{name}: with every quantizer disabled the lowered layer differs from the float layer by {rel:.2g} "
                "of its output range: it would change what the model computes; --exclude it"
            )

    got = run(lower_torch(qm, quantizers=False), compare)
    if failed:
        raise Unsupported(f"the quantized model fails on a calibration batch where the float model runs: {failed[0]}")
    if ref is not None and got is not None:
        if got.shape != ref.shape:
            raise Unsupported(
                f"the quantized model's output has shape {tuple(got.shape)}, the float model's {tuple(ref.shape)}"
            )
        rel = _rel(got, ref)
        if rel > FIDELITY_TOLERANCE:
            raise Unsupported(
                f"with every quantizer disabled the lowered model's output differs from the float model's by {rel:.2g} "
                "of its range though each replaced layer matches: a folded or fused step changed what the model computes"
            )


def check_runtime_fp32(runtime: str, runner: Any, module: nn.Module, batch: Batch, tolerance: float) -> float:
    """The fidelity guard for a runtime's FP32 model: its output on the first evaluation batch is
    PyTorch's (``module``) within ``tolerance`` of the output range (1e-5 unless the runtime says
    why not), else the runtime is refused for the task: its quantized formats would be measured
    against a baseline that is another model. Returns the relative difference."""
    with torch.no_grad():
        ref = first_tensor(module(*batch))
    if ref is None:
        return 0.0
    want = ref.float().numpy()
    got = np.asarray(runner.run(batch), dtype=np.float32)
    if got.shape != want.shape:
        raise Unsupported(f"{runtime}'s FP32 model gives shape {got.shape} where PyTorch gives {want.shape}")
    rel = float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))
    if rel > tolerance:
        raise Unsupported(
            f"{runtime}'s FP32 model differs from PyTorch's by {rel:.2g} of the output range on the first batch "
            f"(more than {tolerance:g}): its export does not compute this model"
        )
    return rel
