"""Where a causal LM lost quality: sensitivity per transformer block, in the LLM's own metric.

Each block's quantized layers (and, as one more group, each quantized layer outside the
blocks: the LM head) are put alone into the float model; perplexity and KL to FP32 are measured
on the first evaluation windows. Cost: one pass per group over ``windows`` windows (a
leave-one-out pass is not made for LLMs: it would double the cost).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from quantwise.explain.causes import feed_inputs
from quantwise.explain.sensitivity import LayerSensitivity, sqnr_db
from quantwise.progress import progress_iter
from quantwise.quantized import QuantizedModel
from quantwise.runtime.torch_sim import lower_torch
from quantwise.tasks.base import Batch, Task
from quantwise.transform.fusion import set_module
from quantwise.transform.gptq_seq import find_blocks

CHANNEL_OUTLIER = 20.0  # the largest input channel's max |x| over the median channel's


def block_groups(qm: QuantizedModel) -> dict[str, list[str]]:
    """Quantized layer names grouped by repeated block (``model.layers.3``); others alone."""
    found = find_blocks(qm.model)
    groups: dict[str, list[str]] = {}
    for name in qm.layers:
        if found and name.startswith(found[0] + "."):
            key = f"{found[0]}.{name[len(found[0]) + 1 :].split('.')[0]}"
        else:
            key = name
        groups.setdefault(key, []).append(name)
    return groups


def _windows(task: Task, windows: int) -> list[tuple[int, Batch]]:
    n = task.info.get("protocol", {}).get("eval_windows", 1)
    return [(i, task.eval_batches[i]) for i in range(min(windows, n))]


def _score(model: nn.Module, task: Task, wins: Sequence[tuple[int, Batch]]) -> tuple[dict[str, Any], np.ndarray]:
    rows, logits = [], []
    with torch.no_grad():
        for i, b in wins:
            out = model(*b).to(torch.float32).numpy()
            logits.append(out[0, -64:])  # the last 64 positions' logits, for the SQNR
            assert task.reduce is not None
            rows.append(task.reduce(i, b, out))
    return task.score(np.concatenate(rows)), np.concatenate(logits)


def block_sensitivity(
    task: Task, qm: QuantizedModel, windows: int = 1, float_model: nn.Module | None = None
) -> tuple[dict[str, Any], list[LayerSensitivity]]:
    """Per block: the metric and logit SQNR with only that block quantized; worst first."""
    ref_model = float_model if float_model is not None else task.model
    sim = lower_torch(qm).eval()
    wins = _windows(task, windows)
    metric = task.primary_metric
    base, ref = _score(ref_model, task, wins)
    full, full_logits = _score(sim, task, wins)
    groups = block_groups(qm)
    rows = []
    for g, names in progress_iter(list(groups.items()), "explain: one block at a time"):
        originals = {n: ref_model.get_submodule(n) for n in names}
        try:
            for n in names:
                set_module(ref_model, n, sim.get_submodule(n))
            m, logits = _score(ref_model, task, wins)
        finally:
            for n, mod in originals.items():
                set_module(ref_model, n, mod)
        row = LayerSensitivity(g, m[metric], sqnr_db(ref, logits), float("nan"), float("nan"))
        row.stats = {"kl_to_fp32": m.get("kl_to_fp32", float("nan")), "layers": len(names)}
        rows.append(row)
    rows.sort(key=lambda r: r.only_metric, reverse=not task.metric_spec().higher_is_better)  # worst first
    summary = {
        "samples": sum(len(b[0]) * b[0].shape[-1] for _, b in wins),
        "unit": "tokens",
        "metric": metric,
        "fraction": task.metric_spec().fraction,
        "fp32_metric": base[metric],
        "quantized_metric": full[metric],
        "quantized_sqnr_db": sqnr_db(ref, full_logits),
        "layers": len(qm.layers),
        "groups": len(groups),
    }
    return summary, rows


def channel_outliers(ref: nn.Module, names: Sequence[str], batches: Sequence[Batch]) -> dict[str, dict[str, Any]]:
    """Per layer input: each channel's max |x| over every token; the largest against the median
    channel, and the top 3 channels (activation outliers live in a few fixed channels in LLMs)."""
    seen: dict[str, torch.Tensor] = {}

    def keep(n: str, x: torch.Tensor) -> None:
        m = x.abs().reshape(-1, x.shape[-1]).amax(0)
        seen[n] = torch.maximum(seen[n], m) if n in seen else m

    feed_inputs(ref, names, batches, keep)
    out = {}
    for n, m in seen.items():
        top = torch.topk(m, min(3, m.numel()))
        med = float(m.median())
        out[n] = {
            "channel_max_over_median": float(top.values[0]) / max(med, 1e-12),
            "top_channels": [int(i) for i in top.indices],
            "top_channel_max": [round(float(v), 3) for v in top.values],
            "median_channel_max": med,
        }
    return out


def diagnose_block(
    qm: QuantizedModel, ref: nn.Module, row: LayerSensitivity, names: Sequence[str], batches: Sequence[Batch]
) -> None:
    """Measured causes and fixes for one block: weight error per layer, and per-channel activation
    outliers where activations are quantized (dynamic W8A8)."""
    from quantwise.explain.causes import WEIGHT_ERROR, weight_error_against

    outl = channel_outliers(ref, names, batches)
    per_layer = {}
    for n in names:
        lq = qm.layers[n]
        w = ref.get_submodule(n).weight
        assert isinstance(w, torch.Tensor)
        st = {**weight_error_against(w, qm, n), **outl.get(n, {})}
        per_layer[n] = st
        r = st.get("channel_max_over_median", 0.0)
        if lq.mode in ("dynamic", "static") and r >= CHANNEL_OUTLIER:
            row.causes.append(
                f"{n}: input channels {st['top_channels']} reach {st['top_channel_max'][0]:.3g}, "
                f"{r:.0f}x the median channel: one int8 step per token is set by them"
            )
            row.suggestions.append(
                f"keep {n} in float (--exclude '{n}') or migrate the outliers into the weights (--smoothquant)"
            )
        if st["weight_error"] >= WEIGHT_ERROR:
            row.causes.append(f"{n}: weight rounding error {100 * st['weight_error']:.1f}%")
            row.suggestions.append(
                "--method awq or gptq (or awq-gptq), a smaller --group-size, or int8 weights for this block"
            )
    if not row.causes:
        row.causes.append("no single measured cause: the block is sensitive as a whole")
        pattern = row.name if list(names) == [row.name] else f"{row.name}.*"
        row.suggestions.append(f"keep it in higher precision (--exclude '{pattern}')")
    row.stats["layers_measured"] = per_layer
