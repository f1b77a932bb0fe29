"""``explain``: sensitivity, causes and fixes for one recipe on one task; terminal, JSON and HTML."""

from __future__ import annotations

import math
from typing import Any

import torch

from quantwise.api import build_quantized
from quantwise.explain.causes import diagnose, input_stats, weight_error_against
from quantwise.explain.sensitivity import first_samples, layer_sensitivity, reference_model
from quantwise.numerics.granularity import PerTensor
from quantwise.quantized import QuantizedModel
from quantwise.recipes import Recipe
from quantwise.tasks.base import Task

EXPLAIN_SCHEMA = "quantwise.explain/1"


def explain(
    task: Task, recipe: Recipe, samples: int = 256, top: int = 5, qm: QuantizedModel | None = None
) -> dict[str, Any]:
    """Per-layer sensitivity of ``recipe`` on ``task``, worst first, with causes for the ``top`` worst.

    ``qm``: the recipe's QuantizedModel if it is already built (else it is built here).
    """
    qm = qm if qm is not None else build_quantized(task, recipe)
    if task.info.get("kind") == "causal-lm":
        return _explain_lm(task, recipe, qm, top)
    if task.info.get("kind") in ("onnx-graph", "tf-graph"):  # measured in ONNX Runtime, node by node
        from quantwise.explain.onnx_nodes import node_sensitivity

        summary, rows = node_sensitivity(task, qm, samples, top)
        return _result(task, recipe, summary, rows, 2 * len(rows) + 2)
    ref = reference_model(task.model, qm)
    summary, rows = layer_sensitivity(task, qm, samples, ref)
    batches, _ = first_samples(task, samples)
    worst = [r for r in rows if qm.layers[r.name].kind != "embedding"][:top]
    stats = input_stats(qm, ref, [r.name for r in worst], batches)
    for r in worst:
        lq = qm.layers[r.name]
        weight = ref.get_submodule(r.name).weight
        assert isinstance(weight, torch.Tensor)
        wst = weight_error_against(weight, qm, r.name)
        r.stats = {**stats.get(r.name, {}), **wst}
        r.causes, r.suggestions = diagnose(
            r.name, lq.kind, lq.mode, isinstance(lq.weight_granularity, PerTensor), stats.get(r.name, {}), wst
        )
    return _result(task, recipe, summary, rows, 2 * len(rows) + 2)


def _explain_lm(task: Task, recipe: Recipe, qm: QuantizedModel, top: int) -> dict[str, Any]:
    """A causal LM: per block (one evaluation window), the worst ``top`` diagnosed layer by layer."""
    from quantwise.explain.blocks import block_groups, block_sensitivity, diagnose_block

    summary, rows = block_sensitivity(task, qm, windows=1)
    groups = block_groups(qm)
    batches = [task.eval_batches[0]]
    # Conv1D layers (GPT-2) compared as the Linear layers they were quantized as
    ref = reference_model(task.model, qm) if qm.info.get("rewritten_as_linear") else task.model
    for r in rows[:top]:
        diagnose_block(qm, ref, r, groups[r.name], batches)
    return _result(task, recipe, summary, rows, len(rows) + 2)


def _result(task: Task, recipe: Recipe, summary: dict[str, Any], rows: list[Any], evaluations: int) -> dict[str, Any]:
    return {
        "schema": EXPLAIN_SCHEMA,
        "task": task.name,
        "recipe": recipe.to_dict(),
        "summary": _finite(summary),
        "layers": [r.to_dict() for r in rows],
        "evaluations": evaluations,
    }


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in d.items()}
