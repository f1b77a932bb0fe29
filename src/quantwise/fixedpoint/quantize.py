"""The ``fixed-point`` handler: float model + calibration data -> a fixed-point QuantizedModel.

Steps: fold BatchNorm; capture the program (refusing unsupported operators before any work);
calibrate a range for every tensor; give each tensor a format (scale-preserving operators
such as max pooling and flatten keep their input's format, so they need no rescaling); quantize
weights per output channel; express every rescaling as an int32 multiplier and a right shift;
and check the worst-case accumulator width against the recipe's accumulator.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from quantwise.calibrate.observers import make_observer
from quantwise.errors import UnsupportedModel, UserError
from quantwise.fixedpoint.floatops import float_forward
from quantwise.fixedpoint.graph import HEAVY, capture
from quantwise.fixedpoint.plan import FixedPointPlan, LayerPlan, TensorFormat
from quantwise.numerics.affine import quantize
from quantwise.numerics.fixedpoint import bits_needed, int_range, pot_scale, quantize_multiplier
from quantwise.numerics.granularity import PerChannel
from quantwise.numerics.qtypes import INT8, INT16
from quantwise.progress import progress_iter
from quantwise.quantized import ActQuant, LayerQuant, QuantizedModel, write_back
from quantwise.recipes import FixedPointRecipe
from quantwise.transform.fusion import fold_batchnorm
from quantwise.transform.registry import Batch

PASS_THROUGH = ("relu", "relu6", "maxpool", "avgpool", "flatten", "reshape", "pad")


def fixed_point_handler(model: nn.Module, recipe: FixedPointRecipe, calib: Sequence[Batch]) -> QuantizedModel:
    model = copy.deepcopy(model).eval()
    if len(calib[0]) != 1:
        raise UnsupportedModel(
            f"the integer executor runs models with one input tensor; this one takes {len(calib[0])} "
            "(a transformer's token ids and attention mask, for instance)"
        )
    folded = fold_batchnorm(model)
    prog = capture(model, calib[0][0])
    observers: dict[str, object] = {}

    def seen(name: str, t: torch.Tensor) -> None:
        observers.setdefault(name, make_observer(recipe.calibration)).observe(t)  # type: ignore[attr-defined]

    with torch.no_grad():
        for batch in progress_iter(calib, f"calibrating fixed point ({recipe.calibration})"):
            float_forward(prog, model, batch[0], seen)
    ranges = {k: [float(v) for v in o.range()] for k, o in observers.items()}  # type: ignore[attr-defined]

    formats: dict[str, TensorFormat] = {prog.input: _format(ranges[prog.input], recipe)}
    for n in prog.nodes:
        formats[n.output] = formats[n.inputs[0]] if n.op in PASS_THROUGH else _format(ranges[n.output], recipe)

    wq_type = INT8 if recipe.weight_bits == 8 else INT16
    layers: dict[str, LayerQuant] = {}
    plans: dict[str, LayerPlan] = {}
    too_wide: list[str] = []
    for n in prog.nodes:
        fout = formats[n.output]
        if n.op in HEAVY:
            mod = model.get_submodule(n.layer)
            fin = formats[n.inputs[0]]
            lq, lp = _layer(n.op, n.layer, mod, fin, fout, wq_type, recipe)
            layers[n.layer], plans[n.layer] = lq, lp
            if lp.worst_bits > recipe.accumulator:
                too_wide.append(f"{n.layer} (needs {lp.worst_bits} bits, {lp.worst_bits - recipe.accumulator} more)")
        if n.op in HEAVY + ("relu", "relu6"):
            act = n.attrs.get("act", n.op if n.op in ("relu", "relu6") else None)
            lo = 0 if act else fout.qmin
            hi = min(fout.qmax, round(6 / fout.scale)) if act == "relu6" else fout.qmax
            n.attrs["clip"] = [lo, hi]
        elif n.op == "avgpool":
            count = n.attrs["kernel"][0] * n.attrs["kernel"][1]
            n.attrs["multiplier"], n.attrs["shift"] = quantize_multiplier(1.0 / count)
        elif n.op == "add":
            ms = [
                quantize_multiplier(_ratio(formats[i].scale, fout.scale, f"add {n.layer!r} input {i}"))
                for i in n.inputs
            ]
            n.attrs["multiplier"], n.attrs["shift"] = [m for m, _ in ms], [r for _, r in ms]
            n.attrs["clip"] = [fout.qmin, fout.qmax]
    if too_wide and recipe.on_overflow == "refuse":
        fix = "accumulator 32" if recipe.accumulator == 16 else "8-bit activations and weights"
        raise UserError(
            f"the worst case overflows the {recipe.accumulator}-bit accumulator in {', '.join(too_wide)}: "
            f"use {fix}, or on_overflow saturate to accumulate with saturation and count every event"
        )
    plan = FixedPointPlan(prog, formats, plans, recipe.accumulator, recipe.on_overflow, ranges)
    write_back(model, layers)
    info = {"calibration_batches": len(calib), "fixed_point": plan.summary(), "accumulator_overflow_possible": too_wide}
    return QuantizedModel(model=model, recipe=recipe, layers=layers, folded=folded, info=info, plan=plan)


def _format(rng: list[float], recipe: FixedPointRecipe) -> TensorFormat:
    lo, hi = rng
    signed = lo < 0
    qmax = int_range(recipe.bits, signed)[1]
    bound = max(abs(lo), abs(hi))
    scale = bound / qmax if bound > 0 else 1.0 / qmax
    if recipe.pot_scales:
        scale = pot_scale(scale)
    return TensorFormat(float(scale), recipe.bits, signed)


def _ratio(num: float, den: float, what: str) -> float:
    r = num / den
    if not 0 < r < 2**30:
        raise UserError(
            f"{what}: the rescaling factor {r:.3g} cannot be held by an int32 multiplier and shift; "
            "the tensor's calibrated range is degenerate (check the calibration data)"
        )
    return r


def _layer(
    op: str, name: str, mod: nn.Module, fin: TensorFormat, fout: TensorFormat, wq_type: object, recipe: FixedPointRecipe
) -> tuple[LayerQuant, LayerPlan]:
    w = mod.weight.detach().to(torch.float64)  # (N, ...)
    n_out = w.shape[0]
    qmax = wq_type.qmax  # type: ignore[attr-defined]
    amax = w.reshape(n_out, -1).abs().amax(dim=1)
    s_w = torch.where(amax > 0, amax / qmax, torch.full_like(amax, 1.0 / qmax))
    if recipe.pot_scales:
        s_w = torch.tensor([pot_scale(float(s)) for s in s_w], dtype=torch.float64)
    s_w = s_w.to(torch.float32)
    zp = torch.zeros(n_out, dtype=torch.int32)
    q = quantize(w.to(torch.float32), s_w, zp, wq_type, PerChannel(0))  # type: ignore[arg-type]
    s_acc = fin.scale * s_w.to(torch.float64)  # (N,)
    bias = mod.bias.detach().to(torch.float64) if mod.bias is not None else torch.zeros(n_out, dtype=torch.float64)
    b_q = torch.round(bias / s_acc).to(torch.int64)
    acc_max = 1 << (recipe.accumulator - 1)
    if int(b_q.abs().max()) >= acc_max:
        c = int(b_q.abs().argmax())
        raise UserError(
            f"layer {name} bias of channel {c} needs {bits_needed(int(b_q.abs().max()))} bits, more than the "
            f"{recipe.accumulator}-bit accumulator: widen the input format (bits 16) or use accumulator 32"
        )
    mults = [quantize_multiplier(float(s) / fout.scale) for s in s_acc]
    worst = b_q.abs() + q.reshape(n_out, -1).to(torch.int64).abs().sum(dim=1) * fin.max_abs
    lp = LayerPlan(
        q,
        s_w,
        b_q,
        torch.tensor([m for m, _ in mults], dtype=torch.int64),
        torch.tensor([r for _, r in mults], dtype=torch.int64),
        bits_needed(int(worst.max())),
    )
    lq = LayerQuant(
        "conv2d" if op == "conv2d" else "linear",
        "static",
        q,
        s_w,
        zp,
        wq_type.name,  # type: ignore[attr-defined]
        PerChannel(0),
        input=ActQuant(fin.scale, 0, fin.qtype),
        output=ActQuant(fout.scale, 0, fout.qtype),
    )
    return lq, lp
