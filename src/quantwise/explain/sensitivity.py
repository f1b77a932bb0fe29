"""Per-layer sensitivity of a QuantizedModel, measured in the PyTorch simulation.

For every quantized layer: the task metric and the output SQNR (dB) when *only that layer*
is quantized, and when *every layer but it* is. Both are measured on the same evaluation
samples against the FP32 outputs. Cost: ``2 * layers + 2`` passes over ``samples`` examples.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from quantwise.progress import progress_iter
from quantwise.quantized import QuantizedModel
from quantwise.runtime.torch_sim import lower_torch
from quantwise.tasks.base import Batch, Task
from quantwise.transform.fusion import set_module


def sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio, ``10 log10(sum ref^2 / sum (out - ref)^2)``; inf when equal."""
    noise = float(np.sum((out.astype(np.float64) - ref) ** 2))
    signal = float(np.sum(ref.astype(np.float64) ** 2))
    return math.inf if noise == 0 else 10.0 * math.log10(max(signal, 1e-30) / noise)


@dataclass
class LayerSensitivity:
    name: str
    only_metric: float
    only_sqnr_db: float
    all_but_metric: float
    all_but_sqnr_db: float
    causes: list[str] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in self.__dict__.items()}


def _run(model: nn.Module, batches: Sequence[Batch]) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([model(*b).to(torch.float32).numpy() for b in batches])


def first_samples(task: Task, samples: int) -> tuple[list[Batch], int]:
    """The first ``samples`` evaluation examples as batches, and how many there are."""
    out, n = [], 0
    for b in task.eval_batches:
        if n >= samples:
            break
        take = min(len(b[0]), samples - n)
        out.append(tuple(t[:take] for t in b))
        n += take
    return out, n


def reference_model(float_model: nn.Module, qm: QuantizedModel) -> nn.Module:
    """The float model with the QuantizedModel's structure (BatchNorm folded the same way,
    transformers ``Conv1D`` as the ``nn.Linear`` it was quantized as, so weights compare in the
    same orientation).

    ``qm.model`` itself holds the *dequantized* weights, so it cannot be the reference.
    """
    from quantwise.nnutil import canonicalize
    from quantwise.transform.fusion import fold_batchnorm

    ref = copy.deepcopy(float_model).eval()
    canonicalize(ref)
    if qm.folded:
        fold_batchnorm(ref)
    return ref


def _only_these(
    ref_model: nn.Module, sim: nn.Module, qm: QuantizedModel, names: Sequence[str], batches: Sequence[Batch]
) -> np.ndarray:
    """Outputs of the float model with only the layers ``names`` quantized."""
    swaps: dict[str, nn.Module] = {}
    for name in names:
        swaps[name] = sim.get_submodule(name)
        relu = qm.layers[name].fused_relu
        if relu and not qm.layers[name].activation_shared:  # a shared one also serves other call sites
            swaps[relu] = nn.Identity()
    return _run_swapped(ref_model, swaps, batches)


def layer_sensitivity(
    task: Task, qm: QuantizedModel, samples: int = 256, float_model: nn.Module | None = None
) -> tuple[dict[str, Any], list[LayerSensitivity]]:
    """Measure every quantized layer alone and left out; returns (summary, rows sorted worst first)."""
    batches, n = first_samples(task, samples)
    metric = task.primary_metric
    float_model = float_model if float_model is not None else reference_model(task.model, qm)
    sim = lower_torch(qm).eval()
    ref = _run(float_model, batches)
    score = _scorer(task, n)
    full = _run(sim, batches)
    summary = {
        "samples": n,
        "metric": metric,
        "fp32_metric": score(ref)[metric],
        "quantized_metric": score(full)[metric],
        "quantized_sqnr_db": sqnr_db(ref, full),
        "layers": len(qm.layers),
    }
    rows = []
    for name in progress_iter(list(qm.layers), "explain: one layer at a time"):
        out_only = _only_these(float_model, sim, qm, [name], batches)
        float_layer = float_model.get_submodule(name)
        act = qm.layers[name].activation  # the sim's ReLU/ReLU6 is fused away
        restored = nn.Sequential(float_layer, nn.ReLU() if act == "relu" else nn.ReLU6()) if act else float_layer
        out_but = _run_swapped(sim, {name: restored}, batches)
        rows.append(
            LayerSensitivity(
                name, score(out_only)[metric], sqnr_db(ref, out_only), score(out_but)[metric], sqnr_db(ref, out_but)
            )
        )
    rows.sort(key=lambda r: (r.only_sqnr_db, r.only_metric))
    return summary, rows


def layer_sensitivity_on(
    float_model: nn.Module, qm: QuantizedModel, batches: Sequence[Batch], groups: dict[str, list[str]] | None = None
) -> list[LayerSensitivity]:
    """Output SQNR with only each layer quantized, on ``batches``; most sensitive first (no labels
    needed). With ``groups`` (``{unit: its layers}``, e.g. a transformer's blocks) each unit is
    measured with all its layers quantized together: one pass per unit, not per layer."""
    ref_model = reference_model(float_model, qm)
    sim = lower_torch(qm).eval()
    ref = _run(ref_model, batches)
    units = groups if groups is not None else {name: [name] for name in qm.layers}
    label = "sensitivity: one layer at a time" if groups is None else "sensitivity: one block at a time"
    rows = [
        LayerSensitivity(
            unit,
            float("nan"),
            sqnr_db(ref, _only_these(ref_model, sim, qm, names, batches)),
            float("nan"),
            float("nan"),
        )
        for unit, names in progress_iter(list(units.items()), label)
    ]
    rows.sort(key=lambda r: r.only_sqnr_db)
    return rows


def _run_swapped(model: nn.Module, swaps: dict[str, nn.Module], batches: Sequence[Batch]) -> np.ndarray:
    """Outputs with some submodules swapped in; the originals are always put back."""
    originals = {n: model.get_submodule(n) for n in swaps}
    try:
        for n, m in swaps.items():
            set_module(model, n, m)
        return _run(model, batches)
    finally:
        for n, m in originals.items():
            set_module(model, n, m)


def _scorer(task: Task, n: int):
    """Score outputs of the first ``n`` evaluation examples with the task's metrics."""
    labels = task.labels[:n] if task.labels is not None else None
    whole = n == sum(len(b[0]) for b in task.eval_batches)

    def score(out: np.ndarray) -> dict[str, Any]:
        if whole:
            return task.score(out)
        if labels is None:
            return {task.primary_metric: float("nan")}
        return {task.primary_metric: float(np.mean(task.predict(out) == labels))}

    return score
