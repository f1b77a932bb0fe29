"""Mixed precision: keep the most sensitive layers in FP32, quantize the rest, meet a budget.

The search, and why it is this one:
1. Rank layers by sensitivity: the output SQNR with *only that layer* quantized, measured on
   the first 64 examples of the task's validation data (never the test set). One pass per layer;
   a causal LM's repeated blocks are ranked as units (each block's layers quantized together, one
   pass per block: 30 for SmolLM2 instead of 211), and k then counts blocks.
2. Find the smallest number k of most-sensitive layers to keep in FP32 such that the whole
   mixed model, measured end to end on the validation data, loses at most ``max_drop`` points
   (a causal LM: its validation perplexity rises at most ``max_drop`` percent over FP32's):
   of accuracy when the task labels its validation data (bbc-minilm), else of predictions
   changed relative to FP32 (an upper bound on the accuracy lost). k is found by binary search over the ranking
   (end-to-end results are close to monotone in k): about log2(layers) + 1 full evaluations.

With ``optimize="size"`` the same search runs from the other end of the size scale: every Linear
and embedding table starts at INT4 weights (GPTQ, blocks of 32; tables in blocks of 32 per row)
and the k most sensitive are promoted to INT8 (per channel; a causal LM's in blocks of 32). Both quantizations are made once and each
candidate is assembled from them, since weight-only layers are quantized independently.

Then the layers kept in float are tried as FP16 weights (half the bytes, the same float32
arithmetic on this CPU), kept if the end-to-end check still meets the budget: this is the
"W8A8 with FP16 for the sensitive layers" hybrid.

A greedy/knapsack over per-layer cost estimates was not used: per-layer accuracy effects do
not add up reliably, and every candidate would need an end-to-end check anyway.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from quantwise.errors import Unsupported, UserError
from quantwise.explain.sensitivity import layer_sensitivity_on
from quantwise.progress import status, warn
from quantwise.quantized import LayerQuant, QuantizedModel, write_back
from quantwise.recipes import MixedRecipe, Recipe, WeightOnlyRecipe, get_recipe
from quantwise.runtime.torch_sim import lower_torch
from quantwise.tasks.base import Task
from quantwise.transform.registry import Batch
from quantwise.transform.schemes import fp16_layer


def _predictions(model: torch.nn.Module, task: Task) -> np.ndarray:
    with torch.no_grad():
        out = np.concatenate([model(*b).to(torch.float32).numpy() for b in task.validation])
    return task.predict(out)


def base_recipe(recipe: MixedRecipe, exclude: tuple[str, ...] = ()) -> Recipe:
    over: dict[str, Any] = {"exclude": tuple(recipe.exclude) + exclude}
    if recipe.base == "static-int8":
        over["calibration"] = recipe.calibration
    return get_recipe(recipe.base, **over)


RANK_SAMPLES = 64  # the ranking needs an order, not a score; every candidate is still verified on all validation data


def first_batches(batches: list, n: int) -> list:
    """The first batches holding at least ``n`` examples."""
    out, seen = [], 0
    for b in batches:
        if seen >= n:
            break
        out.append(b)
        seen += len(b[0])
    return out


def _with_layers(qm: QuantizedModel, replaced: dict[str, LayerQuant], recipe: Recipe) -> QuantizedModel:
    """A copy of ``qm`` whose layers ``replaced`` are quantized as given (their weights written back)."""
    model = copy.deepcopy(qm.model)
    write_back(model, replaced)
    return QuantizedModel(
        model=model,
        recipe=recipe,
        layers={**qm.layers, **replaced},
        skipped={k: v for k, v in qm.skipped.items() if k not in replaced},
        folded=dict(qm.folded),
        info=dict(qm.info),
        activations=dict(qm.activations),
    )


def search_mixed(task: Task, recipe: MixedRecipe) -> QuantizedModel:
    """The mixed-precision QuantizedModel for ``task`` within ``recipe.max_drop`` points (validation)."""
    from quantwise.transform.quantize import quantize_model

    def quantize(model, recipe, calib=None):  # candidates may keep every layer in float
        return quantize_model(model, recipe, calib, allow_empty=True)

    if getattr(task.model, "is_onnx_graph", False):
        from quantwise.pipeline.mixed_onnx import search_mixed_onnx

        return search_mixed_onnx(task, recipe)
    if not task.validation:
        raise UserError(f"task {task.name} has no validation data: mixed precision needs held-out data to search on")
    t0 = time.perf_counter()
    size = recipe.optimize == "size"
    common = {"include": recipe.include, "exclude": recipe.exclude, "module_types": recipe.module_types}
    if recipe.int8_compute and not (size and task.info.get("kind") == "causal-lm"):
        raise Unsupported(
            "mixed with int8 compute builds on a causal LM's weight blocks: use it with --optimize size on a causal LM"
        )
    if size:  # INT4 everywhere, the most sensitive promoted to INT8; both quantized once, then assembled per candidate
        full = quantize(
            task.model,
            WeightOnlyRecipe(
                bits=4, group_size=32, method="gptq", embedding_bits=4, int8_compute=recipe.int8_compute, **common
            ),
            task.calibration,
        )
        # a causal LM's INT8 layers in blocks of 32 too: ONNX Runtime runs them in MatMulNBits (8 bits)
        group = 32 if task.info.get("kind") == "causal-lm" else 0
        high = quantize(
            task.model, WeightOnlyRecipe(bits=8, group_size=group, int8_compute=recipe.int8_compute, **common)
        )
    else:
        full = quantize(task.model, base_recipe(recipe), task.calibration)
    drop_of, criterion = criterion_for(task)
    llm = task.info.get("kind") == "causal-lm"
    lost, unit = ("% perplexity rise", "%") if llm else (" points lost", " points")

    units = None
    if llm:  # a causal LM's repeated blocks are ranked as units (block_groups: other layers alone)
        from quantwise.explain.blocks import block_groups

        units = {u: ns for u, ns in block_groups(full).items() if size or full.layers[ns[0]].kind != "embedding"}
    rows = layer_sensitivity_on(task.model, full, first_batches(task.validation, RANK_SAMPLES), units)
    members = units if units is not None else {n: [n] for n in full.layers}
    ranking = [r.name for r in rows]
    if units is None and not size:
        ranking = [n for n in ranking if full.layers[n].kind != "embedding"]
    evaluations = {"sensitivity passes": len(rows) + 1, "end-to-end": 0}

    def first(k: int) -> list[str]:
        """The layers of the ``k`` most sensitive units."""
        return [n for u in ranking[:k] for n in members[u]]

    cache: dict[int, tuple[QuantizedModel, float]] = {}

    def changed(k: int) -> tuple[QuantizedModel, float]:
        if k not in cache:
            if size:
                qm = _with_layers(full, {n: high.layers[n] for n in first(k)}, recipe)  # weight-only: nothing to unfuse
            else:
                qm = full if k == 0 else quantize(task.model, base_recipe(recipe, tuple(first(k))), task.calibration)
            evaluations["end-to-end"] += 1
            cache[k] = (qm, drop_of(lower_torch(qm)))
            what = f"{k} block(s)/layer(s)" if units is not None else f"{k} layer(s)"
            status(f"mixed: {what} in {'INT8' if size else 'FP32'} -> {cache[k][1]:.2f}{lost} on validation")
        return cache[k]

    top = "INT8" if size else "FP32"
    k, met = smallest_k(
        lambda k: changed(k)[1],
        len(ranking),
        recipe.max_drop,
        f"even with every layer in {top} the budget of {recipe.max_drop}{unit} is not met",
        lost,
        " or use --optimize latency" if size else "",
    )
    qm, drop = changed(k)
    if k and not size:  # the layers kept in float: FP16 storage halves them, if the budget still holds
        half = _with_layers(qm, {n: fp16_layer(qm.model.get_submodule(n)) for n in first(k)}, recipe)
        evaluations["end-to-end"] += 1
        half_drop = drop_of(lower_torch(half))
        status(f"mixed: those {len(first(k))} layer(s) in FP16 -> {half_drop:.2f}{lost} on validation")
        if half_drop <= recipe.max_drop:
            qm, drop = half, half_drop
    qm = dataclasses.replace(qm, recipe=recipe)
    precision = {n: _precision(qm, n) for n in first(len(ranking))}
    qm.info.update(
        {
            "precision_map": precision,
            ("int8_layers" if size else "float_layers"): first(k),
            "ranked_by": "block (the layers of each repeated block together)" if units is not None else "layer",
            "validation_drop_points": drop,
            "optimize": recipe.optimize,
            "budget_met": met,
            "validation_criterion": criterion,
            "evaluations": evaluations,
            "time_to_quantize_s": time.perf_counter() - t0,
            "search": "binary search over the sensitivity ranking, verified end to end on validation data",
        }
    )
    return qm


def smallest_k(
    drop_at: Callable[[int], float], n: int, max_drop: float, not_met: str, lost: str, hint: str = ""
) -> tuple[int, bool]:
    """The fewest of the ``n`` ranked layers to change so that ``drop_at(k) <= max_drop``, by binary
    search (end-to-end drops are close to monotone in k); ``(k, budget met)``. When even ``k = n``
    misses, it warns and returns ``n``, the closest mix."""
    if drop_at(0) <= max_drop:
        return 0, True
    if drop_at(n) > max_drop:
        warn(
            f"mixed: {not_met} ({drop_at(n):.2f}{lost} on validation); returning that closest mix: widen --max-drop{hint}"
        )
        return n, False
    lo, hi = 0, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if drop_at(mid) <= max_drop:
            hi = mid
        else:
            lo = mid
    return hi, True


def criterion_for(task: Task) -> tuple[Callable[[nn.Module], float], str]:
    """What a candidate loses on the validation data, in the budget's units, and what that is.

    A causal LM: the rise of its validation perplexity over FP32's, in percent. A classifier:
    accuracy points lost when the task labels its validation data, else the share of validation
    predictions that change (an upper bound on the accuracy lost)."""
    if task.info.get("kind") == "causal-lm":
        ref_ppl = window_perplexity(task.model, task.validation)

        def ppl_rise(model: nn.Module) -> float:
            return 100.0 * (window_perplexity(model, task.validation) / ref_ppl - 1.0)

        return ppl_rise, "perplexity rise vs FP32 (%)"
    ref_pred = _predictions(task.model, task)
    labels = np.concatenate([y.numpy() for y in task.val_labels]) if task.val_labels else None

    def drop_of(model: nn.Module) -> float:
        pred = _predictions(model, task)
        if labels is not None:
            return 100.0 * (float(np.mean(ref_pred == labels)) - float(np.mean(pred == labels)))
        return 100.0 * float(np.mean(pred != ref_pred))

    return drop_of, "accuracy vs labels" if labels is not None else "predictions changed vs FP32"


def window_perplexity(model: nn.Module, windows: Sequence[Batch]) -> float:
    """Perplexity of ``(input_ids,)`` windows, each scored on its own (the task's protocol)."""
    nll, n = 0.0, 0
    with torch.no_grad():
        for (ids,) in windows:
            logp = torch.log_softmax(model(ids)[:, :-1].to(torch.float64), dim=-1)
            nll -= float(logp.gather(-1, ids[:, 1:, None]).sum())
            n += ids[:, 1:].numel()
    return math.exp(nll / n)


def _precision(qm: QuantizedModel, name: str) -> str:
    lq = qm.layers.get(name)
    if lq is None:
        return "fp32"
    if lq.weight_qtype == "fp16":
        return "fp16 weights"
    return {"static": "int8 (W8A8 static)", "dynamic": "int8 (dynamic)", "weight_only": f"{lq.weight_qtype} weights"}[
        lq.mode
    ]
