"""Mixed precision on an ONNX graph: the most sensitive nodes of an INT8 base kept in float.

The same search as :mod:`quantwise.pipeline.mixed`, run in ONNX Runtime (an ONNX graph has no
PyTorch simulation): the base recipe quantizes every node once (static INT8 calibrates each
node on the float graph, so any subset of its nodes is a valid graph); nodes are ranked by the
output SQNR on validation examples with *only that node* quantized; then a binary search finds
the fewest most-sensitive nodes to keep in float so that the whole graph, run in ONNX Runtime
on the validation data, stays within the budget. An ONNX task validates on its calibration
split (never the test set). ``--optimize size`` (INT4 weights promoted to INT8) is not offered
on graphs.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from quantwise.errors import Unsupported, UserError
from quantwise.explain.sensitivity import sqnr_db
from quantwise.onnxmodel import OnnxGraphModule
from quantwise.pipeline.mixed import RANK_SAMPLES, base_recipe, criterion_for, first_batches, smallest_k
from quantwise.progress import progress_iter, status
from quantwise.quantized import QuantizedModel
from quantwise.recipes import MixedRecipe
from quantwise.runtime.onnx_graph import GraphVariant, graph_outputs
from quantwise.tasks.base import Task
from quantwise.transform.onnx_graph import quantize_onnx


def search_mixed_onnx(task: Task, recipe: MixedRecipe) -> QuantizedModel:
    """The mixed-precision QuantizedModel of an ONNX graph within ``recipe.max_drop`` (validation)."""
    gm = task.model
    assert isinstance(gm, OnnxGraphModule)
    if recipe.optimize == "size" or recipe.int8_compute:
        raise Unsupported(
            "mixed on an ONNX graph keeps the most sensitive nodes of an INT8 base in float: use --optimize latency"
        )
    if not task.validation:
        raise UserError(f"task {task.name} has no validation data: mixed precision needs held-out data to search on")
    t0 = time.perf_counter()
    full = quantize_onnx(gm, base_recipe(recipe), task.calibration)
    drop_of, criterion = criterion_for(task)

    rank_on = first_batches(list(task.validation), RANK_SAMPLES)
    ref = np.concatenate([gm(*b).numpy() for b in rank_on])
    scores = {
        name: sqnr_db(ref, graph_outputs(full, {name: full.layers[name]}, gm, rank_on))
        for name in progress_iter(list(full.layers), "mixed: one node at a time")
    }
    ranking = sorted(scores, key=lambda n: scores[n])  # lowest SQNR (most sensitive) first
    cache: dict[int, float] = {}

    def drop_at(k: int) -> float:
        if k not in cache:
            with GraphVariant(full, {n: lq for n, lq in full.layers.items() if n not in ranking[:k]}, gm) as variant:
                cache[k] = drop_of(variant)
            status(f"mixed: {k} node(s) in FP32 -> {cache[k]:.2f} points lost on validation")
        return cache[k]

    k, met = smallest_k(
        drop_at,
        len(ranking),
        recipe.max_drop,
        f"even with every node in FP32 the budget of {recipe.max_drop} points is not met",
        " points lost",
    )
    kept = set(ranking[:k])
    qm = dataclasses.replace(
        full,
        recipe=recipe,
        layers={n: lq for n, lq in full.layers.items() if n not in kept},
        skipped={
            **full.skipped,
            **{n: "kept in float by mixed precision (among the most sensitive)" for n in ranking[:k]},
        },
        info=dict(full.info),
    )
    qm.info.update(
        {
            "precision_map": {n: ("fp32" if n in kept else f"int8 ({full.layers[n].mode})") for n in ranking},
            "float_layers": ranking[:k],
            "node_sqnr_db": scores,
            "validation_drop_points": drop_at(k),
            "optimize": "latency",
            "budget_met": met,
            "validation_criterion": criterion,
            "evaluations": {"sensitivity passes": len(ranking), "end-to-end": len(cache)},
            "time_to_quantize_s": time.perf_counter() - t0,
            "search": "binary search over the node ranking, each candidate run in ONNX Runtime on validation data",
        }
    )
    if not qm.layers:
        raise Unsupported("mixed kept every node of this ONNX graph in float: the result would be the FP32 model")
    return qm
