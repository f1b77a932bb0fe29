"""Handlers that turn (float model, recipe, calibration data) into a QuantizedModel."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from quantwise.calibrate.collect import run_calibration
from quantwise.nnutil import seven_bit_weights
from quantwise.numerics import INT4, INT8, UINT4, UINT8, dequantize, quantize_tensor
from quantwise.numerics.granularity import PerChannel, PerGroup, PerTensor
from quantwise.progress import progress_iter
from quantwise.quantized import ActGranularity, LayerKind, LayerQuant, QuantizedModel, QuantMode, write_back
from quantwise.recipes import CastRecipe, DynamicInt8Recipe, StaticInt8Recipe, WeightOnlyRecipe
from quantwise.transform.gptq import gptq_quantize
from quantwise.transform.gptq_seq import collect_hessians, sequential_gptq
from quantwise.transform.registry import Batch
from quantwise.transform.rotation import rotate_decoder
from quantwise.transform.select import select_embeddings, select_layers
from quantwise.transform.smoothing import Quant, awq, per_tensor_uint8, per_token_int8, smooth, smoothquant


def _kind(mod: nn.Module) -> str:
    if isinstance(mod, nn.Embedding):
        return "embedding"
    return "conv2d" if isinstance(mod, nn.Conv2d) else "linear"


def quantize_embeddings(
    model: nn.Module, recipe: object, layers: dict[str, LayerQuant], skipped: dict[str, str]
) -> None:
    """Int8 tables with one symmetric scale per row (per token vector), or int4 tables with one
    per 32 values of a row (``embedding_bits=4``), for recipes that ask."""
    chosen, skip = select_embeddings(model, recipe)  # type: ignore[arg-type]
    ties = tied_to_quantized(model, layers)
    for name in ties:  # an embedding sharing a quantized layer's weight (an LM head) holds that layer's table
        skip.pop(name, None)
    skipped.update(skip)
    bits = getattr(recipe, "embedding_bits", 8)
    for name, mod in chosen:
        if name in ties:
            continue
        bits_here = (
            8 if bits == 4 and mod.embedding_dim % 32 else bits
        )  # int4 blocks of 32 need a width divisible by 32
        layers[name] = _weight_layer(mod, "weight_only", bits_here, 32 if bits_here == 4 else 0, True)


def tied_to_quantized(model: nn.Module, layers: dict[str, LayerQuant]) -> dict[str, str]:
    """``{module: quantized layer}`` for modules whose weight *is* a quantized layer's weight (tied
    embeddings and LM heads): they compute with that layer's quantized values, and stay tied."""
    owner = {}
    for name in layers:
        w = getattr(model.get_submodule(name), "weight", None)
        if isinstance(w, torch.Tensor):
            owner[w.untyped_storage().data_ptr()] = name
    ties = {}
    for name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if name in layers or not isinstance(w, torch.Tensor):
            continue
        if (first := owner.get(w.untyped_storage().data_ptr())) is not None:
            ties[name] = first
    return ties


def fp16_layer(mod: nn.Module) -> LayerQuant:
    """A Conv2d/Linear whose weights are stored in half precision (computed in float32)."""
    w = mod.weight.detach().to(torch.float16)
    return LayerQuant(
        _kind(mod), "weight_only", w, torch.ones(()), torch.zeros((), dtype=torch.int32), "fp16", PerTensor()
    )


def _weight_layer(
    mod: nn.Module,
    mode: str,
    bits: int,
    group: int,
    symmetric: bool,
    per_channel: bool = True,
    fp16: bool = False,
    full: bool = False,
    seven_bit: bool = False,
) -> LayerQuant:
    """Round-to-nearest weight quantization of one layer (``fp16``: scales rounded to half precision;
    ``full``: symmetric int4 over the full grid, see ``choose_qparams``; ``seven_bit``: int8 within 7 bits)."""
    qtype = (INT8 if symmetric else UINT8) if bits == 8 else (INT4 if symmetric else UINT4)
    gran = PerGroup(group) if group else (PerChannel(0) if per_channel else PerTensor())
    w = mod.weight.detach().to(torch.float32)
    q, s, z = quantize_tensor(
        w, qtype, gran, symmetric, fp16_scale=fp16, full_range=full and bits == 4, reduce_range=seven_bit and bits == 8
    )
    return LayerQuant(_kind(mod), mode, q, s, z, qtype.name, gran)


def _rtn(
    bits: int, group: int, symmetric: bool, per_channel: bool = True, fp16: bool = False, full: bool = False
) -> Quant:
    """``w -> dequantize(quantize(w))`` with the rounding ``_weight_layer`` uses (for the searches)."""
    qtype = (INT8 if symmetric else UINT8) if bits == 8 else (INT4 if symmetric else UINT4)
    gran = PerGroup(group) if group else (PerChannel(0) if per_channel else PerTensor())

    def quant(w: torch.Tensor) -> torch.Tensor:
        q, s, z = quantize_tensor(w, qtype, gran, symmetric, fp16_scale=fp16, full_range=full and bits == 4)
        return dequantize(q, s, z, gran)

    return quant


def _smoothquant(
    model: nn.Module, recipe: DynamicInt8Recipe | StaticInt8Recipe, chosen: list, calib: Sequence[Batch]
) -> dict[str, object]:
    """Fold SmoothQuant scales before the recipe's W8A8 quantization (``recipe.smoothquant``)."""
    lin = _scalable(model, {n: m for n, m in chosen if isinstance(m, nn.Linear)})
    per_token = getattr(recipe, "activations", "") == "per-token"
    act = per_token_int8 if per_token else per_tensor_uint8
    quant = _rtn(8, 0, True, recipe.per_channel)
    alpha = recipe.smooth_alpha or None
    return smooth(
        model,
        lin[0],
        calib,
        "smoothquant",
        lambda gs: {**smoothquant(model, gs, lambda _n: quant, act, alpha), "tied_not_scaled": lin[1]},
        siblings=False,  # measured worse for W8A8 (transform/smoothing.py)
    )


def _output_head(model: nn.Module) -> str | None:
    """The name of the module producing a Hugging Face model's logits (its output embeddings)."""
    lm = next((m for m in model.modules() if hasattr(m, "get_output_embeddings")), None)
    head = lm.get_output_embeddings() if lm is not None else None
    return next((n for n, m in model.named_modules() if m is head), None) if head is not None else None


def _scalable(
    model: nn.Module, linears: dict[str, nn.Linear], same: Callable[[torch.Tensor], int] | None = None
) -> tuple[dict[str, nn.Linear], dict[str, str]]:
    """Linears whose weight no other module shares (scaling a tied LM head would scale the embedding).

    ``same(weight)``: what two shared weights have in common (default their storage; ``id`` for a
    model whose weights are not loaded yet, ``meta``)."""
    key = same or (lambda w: w.untyped_storage().data_ptr())
    owners: dict[int, list[str]] = {}
    for n, m in model.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor):
            owners.setdefault(key(w), []).append(n)
    keep, tied = {}, {}
    for n, m in linears.items():
        others = [o for o in owners[key(m.weight)] if o != n]
        if others:
            tied[n] = f"its weight is tied to {others[0]}, which a scale would change too"
        else:
            keep[n] = m
    return keep, tied


def cast_handler(model: nn.Module, recipe: CastRecipe, calib: Sequence[Batch]) -> QuantizedModel:
    return QuantizedModel(model=copy.deepcopy(model).eval(), recipe=recipe, cast=recipe.dtype)


def plan_weight_only(
    model: nn.Module, recipe: WeightOnlyRecipe
) -> tuple[list[tuple[str, nn.Module]], dict[str, str], dict[str, int], dict[str, int], dict[str, object]]:
    """Which layers a weight-only recipe quantizes: ``(todo, skipped, groups, bits, info)``.

    ``groups``: layers whose input size needs a smaller group than the recipe's; ``bits``: each
    layer's width (the output head's may differ, ``head_bits``). Reads only shapes, so it works on
    a model whose weights are not loaded (``meta`` tensors, as the streaming path builds)."""
    chosen, skipped = select_layers(model, recipe)
    todo = []
    groups: dict[str, int] = {}  # layers whose group size had to be smaller than the recipe's
    for name, mod in chosen:
        k = mod.weight[0].numel()
        if recipe.group_size and isinstance(mod, nn.Conv2d):
            skipped[name] = (
                "per-group scales apply to Linear layers; Conv2d kept in float (use group_size=0 for per-channel)"
            )
        elif recipe.group_size and k % recipe.group_size:
            fits = [g for g in (128, 64, 32, 16) if g < recipe.group_size and k % g == 0]
            if fits:  # a smaller group (finer, never coarser) where the input size is no multiple of it
                groups[name] = fits[0]
                todo.append((name, mod))
            else:
                skipped[name] = f"input size {k} is not a multiple of group size {recipe.group_size} (nor of 16)"
        else:
            todo.append((name, mod))
    info: dict[str, object] = {"group_size_fallback": dict(groups)} if groups else {}
    bits = {n: recipe.bits for n, _ in todo}
    if recipe.head_bits:
        head = _output_head(model)
        if head in bits:
            bits[head] = recipe.head_bits
        info["head_bits"] = {head: recipe.head_bits} if head in bits else "no quantized output head found"
    return todo, skipped, groups, bits, info


def weight_only_handler(model: nn.Module, recipe: WeightOnlyRecipe, calib: Sequence[Batch]) -> QuantizedModel:
    model = copy.deepcopy(model).eval()
    layers: dict[str, LayerQuant] = {}
    rotation = rotate_decoder(model, calib) if recipe.rotate else None
    todo, skipped, groups, bits, info = plan_weight_only(model, recipe)
    if rotation is not None:
        info["rotation"] = rotation
    if recipe.method.startswith("awq"):
        lin, tied = _scalable(model, {n: m for n, m in todo if isinstance(m, nn.Linear)})
        quant_for = awq_quant_for(recipe, bits, groups)
        info["awq"] = smooth(
            model, lin, calib, "awq", lambda gs: {**awq(model, gs, quant_for), "tied_not_scaled": tied}
        )
    if recipe.method in ("gptq", "awq-gptq"):
        layers, gptq_info = _gptq_layers(model, recipe, todo, calib, groups, bits)
        info.update(gptq_info)
    else:
        for name, mod in todo:
            g = groups.get(name, recipe.group_size)
            layers[name] = _weight_layer(
                mod, "weight_only", bits[name], g, recipe.symmetric, fp16=recipe.fp16_scales, full=recipe.full_range
            )
    quantize_embeddings(model, recipe, layers, skipped)
    write_back(model, layers)
    mark_int8_compute(layers, recipe)
    return QuantizedModel(model=model, recipe=recipe, layers=layers, skipped=skipped, info=info)


def mark_int8_compute(layers: dict[str, LayerQuant], recipe: WeightOnlyRecipe) -> None:
    """With ``int8_compute``, every Linear's input is quantized per row and weight block at run time."""
    if recipe.int8_compute:
        for lq in layers.values():
            if lq.kind == LayerKind.LINEAR:
                lq.dynamic_granularity = ActGranularity.PER_BLOCK


def awq_quant_for(recipe: WeightOnlyRecipe, bits: dict[str, int], groups: dict[str, int]) -> Callable[[str], Quant]:
    """The weight rounding AWQ's scale search measures each layer with (the recipe's, per layer)."""

    def quant_for(n: str) -> Quant:
        return _rtn(
            bits[n], groups.get(n, recipe.group_size), recipe.symmetric, fp16=recipe.fp16_scales, full=recipe.full_range
        )

    return quant_for


def gptq_layer(mod: nn.Module, h: torch.Tensor, recipe: WeightOnlyRecipe, b: int, g: int) -> LayerQuant:
    """GPTQ one Linear from its input Hessian ``h``; its weight becomes the dequantized result
    (later blocks are calibrated on what this layer now computes)."""
    qtype = (INT8 if recipe.symmetric else UINT8) if b == 8 else (INT4 if recipe.symmetric else UINT4)
    q, s, z = gptq_quantize(
        mod.weight,
        h,
        qtype,
        g,
        recipe.symmetric,
        recipe.gptq_damp,
        fp16_scales=recipe.fp16_scales,
        full_range=recipe.full_range and b == 4,
        act_order=recipe.gptq_act_order,
    )
    layer = LayerQuant(
        LayerKind.LINEAR, QuantMode.WEIGHT_ONLY, q, s, z, qtype.name, PerGroup(g) if g else PerChannel(0)
    )
    with torch.no_grad():
        mod.weight.copy_(layer.dequantized_weight().reshape(mod.weight.shape))
    return layer


def _gptq_layers(
    model: nn.Module,
    recipe: WeightOnlyRecipe,
    todo: list[tuple[str, nn.Module]],
    calib: Sequence[Batch],
    groups: dict[str, int] | None = None,
    bits: dict[str, int] | None = None,
) -> tuple[dict[str, LayerQuant], dict[str, object]]:
    """GPTQ on Linear layers; Conv2d layers use round-to-nearest (listed in ``info``).

    A model with repeated blocks (a transformer) is quantized block by block, each block
    calibrated on the quantized outputs of the blocks before it (``gptq_seq``). Otherwise the
    Hessians of every Linear are gathered in one pass over the calibration set (one K x K
    float64 matrix per layer), then layers are quantized one at a time.
    """
    groups = groups or {}
    bits = bits or {}
    layers: dict[str, LayerQuant] = {}

    def gptq_one(name: str, mod: nn.Module, h: torch.Tensor) -> None:
        layers[name] = gptq_layer(mod, h, recipe, bits.get(name, recipe.bits), groups.get(name, recipe.group_size))

    linear = {n: m for n, m in todo if isinstance(m, nn.Linear)}
    info = sequential_gptq(model, linear, calib, gptq_one)
    if info is None:
        hess = collect_hessians(linear, lambda: run_calibration(model, calib, "GPTQ: collecting Hessians"))
        for name, mod in progress_iter(list(linear.items()), "GPTQ: quantizing layers"):
            gptq_one(name, mod, hess[name])
        info = {"gptq_order": "one pass (no repeated blocks)"}
    for name, mod in todo:
        if name not in linear:
            g = groups.get(name, recipe.group_size)
            b = bits.get(name, recipe.bits)
            layers[name] = _weight_layer(
                mod, "weight_only", b, g, recipe.symmetric, fp16=recipe.fp16_scales, full=recipe.full_range
            )
    rtn = [n for n, m in todo if not isinstance(m, nn.Linear)]
    return {n: layers[n] for n, _ in todo}, {**info, "gptq_layers": len(linear), "rtn_fallback_layers": rtn}


def reduce_range_info(recipe: Any, info: dict[str, Any]) -> bool:
    """Resolve the recipe's ``reduce_range`` on this machine, saying so in ``info`` when it is on."""
    seven = seven_bit_weights(recipe.reduce_range)
    if seven:
        why = (
            "asked for"
            if recipe.reduce_range == "on"
            else "this CPU has no VNNI: its u8 x s8 kernels saturate 8-bit weights"
        )
        info["reduce_range"] = f"int8 weights within 7 bits ({why})"
    return seven


def dynamic_handler(model: nn.Module, recipe: DynamicInt8Recipe, calib: Sequence[Batch]) -> QuantizedModel:
    model = copy.deepcopy(model).eval()
    info: dict[str, Any] = {"rotation": rotate_decoder(model, calib)} if recipe.rotate else {}
    chosen, skipped = select_layers(model, recipe)
    if recipe.smoothquant:
        info["smoothquant"] = _smoothquant(model, recipe, chosen, calib)
    layers = {}
    seven = reduce_range_info(recipe, info)
    for name, mod in chosen:
        if isinstance(mod, nn.Conv2d):
            skipped[name] = "dynamic INT8 covers Linear layers; use static-int8 for convolutions"
            continue
        layers[name] = _weight_layer(mod, "dynamic", 8, 0, True, recipe.per_channel, seven_bit=seven)
        layers[name].dynamic_granularity = ActGranularity(recipe.activations)
    quantize_embeddings(model, recipe, layers, skipped)
    write_back(model, layers)
    return QuantizedModel(model=model, recipe=recipe, layers=layers, skipped=skipped, info=info)
