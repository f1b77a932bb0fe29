"""``(model, recipe, calibration) -> QuantizedModel``: the one transform every scheme goes through.

Checks the inputs, rewrites Linear-equivalent layers (transformers ``Conv1D``) on a copy, runs
the recipe's handler from the explicit table, and refuses a result that quantized nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import nn

from quantwise.errors import Unsupported, UserError
from quantwise.quantized import QuantizedModel
from quantwise.recipes import DynamicInt8Recipe, Recipe, StaticInt8Recipe, WeightOnlyRecipe
from quantwise.transform.registry import Batch, handlers, needs_calibration


def quantize_model(
    model: nn.Module, recipe: Recipe, calibration_data: Sequence[Batch] | None = None, allow_empty: bool = False
) -> QuantizedModel:
    """Quantize ``model`` as ``recipe`` says; the one entry point for every scheme.

    Args:
        model: A float ``nn.Module`` (not modified).
        recipe: A recipe object.
        calibration_data: Batches of model inputs (tuples of tensors); required by static and GPTQ.

    Example:
        >>> qm = quantize_model(model, get_recipe("static-int8"), [(x,) for x in batches])
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise UserError(
            "a TorchScript module cannot be quantized faithfully (quantwise rewrites nn.Module layers, and a scripted "
            "graph would run unchanged): pass the nn.Module itself"
        )
    from quantwise.onnxmodel import OnnxGraphModule

    if isinstance(model, OnnxGraphModule):  # an ONNX file: its graph is quantized directly
        from quantwise.transform.onnx_graph import quantize_onnx

        return quantize_onnx(model, recipe, list(calibration_data or []))
    handler = handlers().get(type(recipe))
    if handler is None:
        raise UserError(
            f"recipe {recipe.name!r} needs a task (it searches or trains on the task's data): use quantwise.evaluate(task, recipe), "
            "or for your own training loop quantwise.transform.qat.prepare_qat / convert_qat"
        )
    check_finite_weights(model)
    calib = list(calibration_data or [])
    captured = None
    if isinstance(recipe, (StaticInt8Recipe, DynamicInt8Recipe, WeightOnlyRecipe)) and calib:
        from quantwise.transform.capture import capture_if_needed

        model, captured = capture_if_needed(model, calib[0])  # Conv2d/Linear subclasses: as a graph
    model, rewritten = _canonical_copy(model)
    if needs_calibration(recipe):
        if not calib:
            raise UserError(
                f"recipe {recipe.name} needs calibration data and the calibration set is empty: pass calibration batches"
            )
        check_batch(model, calib[0], "calibration")
    t0 = time.perf_counter()
    qm = handler(model, recipe, calib)
    qm.info["time_to_quantize_s"] = time.perf_counter() - t0
    if captured is not None:
        qm.info["capture_failed" if "failed" in captured else "captured"] = captured
    if qm.layers and qm.plan is None:
        from quantwise.transform.schemes import tied_to_quantized

        if ties := tied_to_quantized(qm.model, qm.layers):  # every handler: a shared weight is said
            qm.info["tied_weights"] = ties
            for name in ties:
                qm.skipped.pop(name, None)
    if not (allow_empty or qm.layers or qm.plan is not None or qm.cast):
        reasons = sorted({r for r in qm.skipped.values()})
        detail = (
            f" ({len(qm.skipped)} left in float: {'; '.join(reasons[:3])})"
            if reasons
            else " (it has no Linear or Conv2d layer)"
        )
        raise Unsupported(f"{recipe.name} quantized no layer of this model{detail}: the result would be the FP32 model")
    if rewritten:
        qm.info["rewritten_as_linear"] = rewritten
    return qm


def _canonical_copy(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """``model`` itself, or a copy with Linear-equivalent layers (transformers ``Conv1D``) as ``nn.Linear``."""
    import copy

    from quantwise.nnutil import canonicalize, is_hf_conv1d

    if not any(is_hf_conv1d(m) for m in model.modules()):
        return model, []
    model = copy.deepcopy(model)
    return model, canonicalize(model)


def check_finite_weights(model: nn.Module) -> None:
    """Refuse NaN/Inf parameters, naming the first one."""
    for name, p in model.named_parameters():
        if p.is_floating_point() and not torch.isfinite(p).all():
            raise UserError(f"parameter {name} contains NaN or Inf: fix or retrain the model before quantizing")


def check_batch(model: nn.Module, batch: Batch, what: str) -> None:
    """Fail before any work if a batch has NaN/Inf or does not fit the model."""
    if not isinstance(batch, tuple) or not all(isinstance(t, torch.Tensor) for t in batch):
        raise UserError(f"{what} batches must be tuples of tensors, got {type(batch).__name__}")
    for t in batch:
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise UserError(f"{what} data contains NaN or Inf: clean the inputs")
    try:
        with torch.no_grad():
            model(*batch)
    except Exception as e:  # the model's own error says which shape/dtype was wrong
        shapes = ", ".join(f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}" for t in batch)
        raise UserError(
            f"{what} data does not fit the model (got {shapes}): {type(e).__name__}: {str(e).splitlines()[0]}"
        ) from None
