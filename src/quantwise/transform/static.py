"""Static INT8 (W8A8, activation ranges calibrated ahead of time): the handler.

BatchNorm is folded and ReLU/ReLU6 fused by dataflow (:mod:`quantwise.transform.fusion`); every
layer's input and each conv's output (after its fused activation) is calibrated; and, where the
model can be traced, residual adds and max-pools between quantized tensors are quantized too
(:mod:`quantwise.transform.act_points`), so a runtime runs them in int8.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from quantwise.calibrate.collect import observing, run_calibration
from quantwise.calibrate.observers import make_observer
from quantwise.numerics import INT8, UINT8, choose_qparams
from quantwise.quantized import ActQuant, QuantizedModel, apply_activation, write_back
from quantwise.recipes import StaticInt8Recipe
from quantwise.transform.act_points import observing_module, plan_points, resolve_points
from quantwise.transform.fusion import (
    activation_kind,
    find_relu_after,
    fold_batchnorm,
    pairing_method,
    shared_activations,
)
from quantwise.transform.registry import Batch
from quantwise.transform.schemes import _smoothquant, _weight_layer, quantize_embeddings, reduce_range_info
from quantwise.transform.select import select_layers


def static_handler(model: nn.Module, recipe: StaticInt8Recipe, calib: Sequence[Batch]) -> QuantizedModel:
    model = copy.deepcopy(model).eval()
    folded = fold_batchnorm(model) if recipe.fold_bn else {}
    chosen, skipped = select_layers(model, recipe)
    smoothed = {"smoothquant": _smoothquant(model, recipe, chosen, calib)} if recipe.smoothquant else {}
    relus = find_relu_after(model) if recipe.fuse_relu else {}
    shared = shared_activations(model) & set(relus.values())
    kinds = {n: activation_kind(model.get_submodule(r)) or "relu" for n, r in relus.items()}
    kw = {"percentile": recipe.percentile} if recipe.calibration == "percentile" else {}
    in_obs = {n: make_observer(recipe.calibration, **kw) for n, _ in chosen}
    # Output quantization where the runtime needs it for an integer kernel (Conv) or a ReLU is fused;
    # a shared ReLU is observed through the layer's own output, with the activation applied.
    out_at = {
        n: n if relus.get(n) in shared else relus.get(n, n)
        for n, m in chosen
        if recipe.quantize_outputs or isinstance(m, nn.Conv2d) or n in relus
    }
    out_obs = {target: make_observer(recipe.calibration, **kw) for target in out_at.values()}
    through = {n: partial(apply_activation, act=kinds[n]) for n in out_at if relus.get(n) in shared}
    plan = plan_points(model, {t: n for n, t in out_at.items()}, set(in_obs)) if recipe.quantize_adds else None
    point_obs = {p: make_observer(recipe.calibration, **kw) for p in (plan.calibrate if plan else [])}
    runner = observing_module(plan, {p: o.observe for p, o in point_obs.items()}) if plan and point_obs else model
    with observing(model, in_obs, out_obs, through):
        run_calibration(runner, calib, f"calibrating ({recipe.calibration})")
    act_t = INT8 if recipe.symmetric_activations else UINT8
    layers = {}
    seven = recipe.weight_bits == 8 and reduce_range_info(recipe, smoothed)
    for name, mod in chosen:
        lq = _weight_layer(mod, "static", recipe.weight_bits, 0, True, recipe.per_channel, seven_bit=seven)
        lq.input = _act(in_obs[name].range(), act_t, recipe.symmetric_activations)
        if name in out_at:
            lq.output = _act(out_obs[out_at[name]].range(), act_t, recipe.symmetric_activations)
            lq.fused_relu = relus.get(name)
            if lq.fused_relu:
                lq.fused_act = kinds[name]
                lq.activation_shared = lq.fused_relu in shared
        layers[name] = lq
    points = {}
    if plan is not None:
        calibrated = {p: _act(o.range(), act_t, recipe.symmetric_activations) for p, o in point_obs.items()}
        points = resolve_points(plan, calibrated, layers)
    quantize_embeddings(model, recipe, layers, skipped)
    write_back(model, layers)
    info = {"calibration_batches": len(calib), "pairing": pairing_method(model), **smoothed}
    if plan is not None and points:
        info["quantized_between_layers"] = {
            "adds": len(plan.calibrate) - len(plan.concats),
            "concats": len(plan.concats),
            "max_pools": len(plan.inherit),
            "layers_on_their_source_grid": len(plan.inputs),
        }
    return QuantizedModel(
        model=model, recipe=recipe, layers=layers, skipped=skipped, folded=folded, info=info, activations=points
    )


def _act(rng: tuple[float, float], qtype: object, symmetric: bool) -> ActQuant:
    s, z = choose_qparams(torch.tensor(rng[0]), torch.tensor(rng[1]), qtype, symmetric)  # type: ignore[arg-type]
    return ActQuant(float(s), int(z), qtype.name)  # type: ignore[attr-defined]
