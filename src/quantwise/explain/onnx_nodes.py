"""Per-node sensitivity of a quantized ONNX graph, measured in ONNX Runtime itself.

The ONNX counterpart of :mod:`quantwise.explain.sensitivity`: for every quantized node, the
task metric and output SQNR with *only that node* quantized and with *every node but it*,
each a graph lowered and run in ONNX Runtime on the same evaluation samples (there is no
PyTorch simulation of an ONNX graph). Causes come from the node's measured inputs and weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from quantwise.explain.causes import diagnose, stats_of_inputs, weight_error_against
from quantwise.explain.sensitivity import LayerSensitivity, _scorer, first_samples, sqnr_db
from quantwise.numerics.granularity import PerTensor
from quantwise.onnxmodel import OnnxGraphModule, gather_tables, heavy_nodes
from quantwise.progress import progress_iter
from quantwise.quantized import QuantizedModel
from quantwise.runtime.onnx_graph import graph_outputs
from quantwise.tasks.base import Batch, Task
from quantwise.transform.onnx_graph import observe_tensors, weight_torch_layout


def node_sensitivity(
    task: Task, qm: QuantizedModel, samples: int = 256, top: int = 5
) -> tuple[dict[str, Any], list[LayerSensitivity]]:
    """Every quantized node alone and left out, worst first; the ``top`` worst diagnosed."""
    gm = task.model
    assert isinstance(gm, OnnxGraphModule)
    batches, n = first_samples(task, samples)
    metric = task.primary_metric
    score = _scorer(task, n)
    ref = np.concatenate([gm(*b).numpy() for b in batches])
    full = graph_outputs(qm, qm.layers, gm, batches)
    summary = {
        "samples": n,
        "metric": metric,
        "fp32_metric": score(ref)[metric],
        "quantized_metric": score(full)[metric],
        "quantized_sqnr_db": sqnr_db(ref, full),
        "layers": len(qm.layers),
    }
    rows = []
    for name in progress_iter(list(qm.layers), "explain: one node at a time"):
        only = graph_outputs(qm, {name: qm.layers[name]}, gm, batches)
        but = graph_outputs(qm, {k: v for k, v in qm.layers.items() if k != name}, gm, batches)
        rows.append(
            LayerSensitivity(name, score(only)[metric], sqnr_db(ref, only), score(but)[metric], sqnr_db(ref, but))
        )
    rows.sort(key=lambda r: (r.only_sqnr_db, r.only_metric))
    _diagnose(gm, qm, rows[:top], batches)
    return summary, rows


def _diagnose(gm: OnnxGraphModule, qm: QuantizedModel, rows: list[LayerSensitivity], batches: Sequence[Batch]) -> None:
    nodes = {h.name: h for h in heavy_nodes(gm.proto)[0] + gather_tables(gm.proto)}
    tensors = sorted({nodes[r.name].x for r in rows if nodes[r.name].op != "Gather"})  # not a table's indices
    seen: dict[str, list[torch.Tensor]] = {t: [] for t in tensors}
    observe_tensors(
        gm,
        tensors,
        batches,
        lambda t, v: seen[t].append(torch.from_numpy(np.asarray(v, np.float32)).flatten()),
        "explain: node inputs",
    )
    stats = stats_of_inputs(qm, {r.name: seen[nodes[r.name].x] for r in rows if nodes[r.name].x in seen})
    for r in rows:
        lq = qm.layers[r.name]
        wst = weight_error_against(weight_torch_layout(gm, nodes[r.name]), qm, r.name)
        r.stats = {**stats.get(r.name, {}), **wst}
        r.causes, r.suggestions = diagnose(
            r.name, lq.kind, lq.mode, isinstance(lq.weight_granularity, PerTensor), stats.get(r.name, {}), wst
        )
