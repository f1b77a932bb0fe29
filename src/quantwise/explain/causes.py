"""Measured causes for a layer's sensitivity, and what would fix each.

Each cause is a number measured on the layer's real inputs or weights, compared with a
threshold written here; a layer gets only the causes its numbers show.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from quantwise.numerics import INT8, PerChannel, choose_qparams, dequantize, get_qtype, quantize
from quantwise.quantized import QuantizedModel
from quantwise.tasks.base import Batch

OUTLIER_RATIO = 8.0  # max |x| against the 99.99th percentile of |x|
CLIP_FRACTION = 1e-3  # share of inputs outside the calibrated range
WEIGHT_ERROR = 0.05  # relative Frobenius error of the quantized weight
PER_CHANNEL_GAIN = 2.0  # per-tensor weight error against per-channel


def feed_inputs(
    ref: torch.nn.Module, names: Sequence[str], batches: Sequence[Batch], on_input: Callable[[str, torch.Tensor], None]
) -> None:
    """Run ``batches`` through ``ref`` and hand each named layer's input to ``on_input(name, x)``."""
    hooks = [
        ref.get_submodule(n).register_forward_pre_hook(lambda _m, a, n=n: on_input(n, a[0].detach())) for n in names
    ]
    try:
        with torch.no_grad():
            for b in batches:
                ref(*b)
    finally:
        for h in hooks:
            h.remove()


def input_stats(
    qm: QuantizedModel,
    ref: torch.nn.Module,
    names: Sequence[str],
    batches: Sequence[Batch],
    max_values: int = 2_000_000,
) -> dict[str, dict[str, float]]:
    """Per layer of the float model ``ref``: max |x|, its 99.99th percentile, and the share of
    inputs the stored static range clips."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    feed_inputs(ref, names, batches, lambda n, x: seen[n].append(x.flatten()))
    return stats_of_inputs(qm, seen, max_values)


def stats_of_inputs(
    qm: QuantizedModel, seen: dict[str, list[torch.Tensor]], max_values: int = 2_000_000
) -> dict[str, dict[str, float]]:
    """:func:`input_stats` from each layer's collected (flattened) float inputs."""
    out = {}
    g = torch.Generator().manual_seed(0)
    for n, parts in seen.items():
        if not parts or not parts[0].is_floating_point():
            continue  # embeddings take token ids
        x = torch.cat(parts).to(torch.float32)
        a = x.abs()
        sample = a[torch.randint(0, a.numel(), (min(a.numel(), max_values),), generator=g)]
        p = float(torch.quantile(sample, 0.9999))
        st = {"abs_max": float(a.max()), "abs_p9999": p, "outlier_ratio": float(a.max()) / max(p, 1e-12)}
        lq = qm.layers[n]
        if lq.input is not None:
            qt = get_qtype(lq.input.qtype)
            half = lq.input.scale / 2  # values within half a step of the ends round onto the grid
            lo = (qt.qmin - lq.input.zero_point) * lq.input.scale - half
            hi = (qt.qmax - lq.input.zero_point) * lq.input.scale + half
            st["clip_fraction"] = float(((x < lo) | (x > hi)).float().mean())
        out[n] = st
    return out


def weight_error_against(original: torch.Tensor, qm: QuantizedModel, name: str) -> dict[str, float]:
    """Weight error of the stored quantization against the original float weight, and per-channel int8's."""
    lq = qm.layers[name]
    w = original.detach().to(torch.float32)
    norm = max(float(torch.linalg.norm(w)), 1e-12)
    err = float(torch.linalg.norm(lq.dequantized_weight().reshape(w.shape) - w)) / norm
    w2 = w.reshape(w.shape[0], -1)
    lo, hi = w2.amin(dim=1), w2.amax(dim=1)
    s, z = choose_qparams(lo, hi, INT8, symmetric=True)
    pc = dequantize(quantize(w2, s, z, INT8, PerChannel(0)), s, z, PerChannel(0))
    return {"weight_error": err, "per_channel_int8_error": float(torch.linalg.norm(pc - w2)) / norm}


def diagnose(
    name: str, kind: str, mode: str, per_tensor: bool, inp: dict[str, float], wst: dict[str, float]
) -> tuple[list[str], list[str]]:
    """``(causes, suggestions)`` from a layer's measured numbers."""
    causes, fixes = [], []
    r = inp.get("outlier_ratio", 0.0)
    if r >= OUTLIER_RATIO and mode in ("static", "dynamic"):
        causes.append(
            f"activation outliers: max |x| {inp['abs_max']:.3g} is {r:.0f}x the 99.99th percentile {inp['abs_p9999']:.3g}"
        )
        fixes.append(f"keep {name} in higher precision (--exclude '{name}')")
        fixes.append("migrate the outliers into the weights (--smoothquant; folded into the preceding norm or Linear)")
        fixes.append(
            "--activations per-token (dynamic)"
            if mode == "dynamic"
            else "--calibration percentile or mse to clip the outliers"
        )
    clip = inp.get("clip_fraction", 0.0)
    if clip >= CLIP_FRACTION:
        causes.append(f"clipping: {100 * clip:.2f}% of inputs fall outside the calibrated range")
        fixes.append("--calibration minmax (or mse) for a wider range")
    err = wst.get("weight_error", 0.0)
    if err >= WEIGHT_ERROR:
        causes.append(f"weight rounding error {100 * err:.1f}%")
        fixes.append("--method gptq or awq, a smaller --group-size, or int8 weights for this layer")
    pc = wst.get("per_channel_int8_error")
    if per_tensor and pc is not None and err >= PER_CHANNEL_GAIN * pc and err > 0:
        causes.append(
            f"a per-tensor weight range: per-channel would cut weight error from {100 * err:.2f}% to {100 * pc:.2f}%"
        )
        fixes.append("per-channel weights (drop --per-tensor)")
    if not causes:
        causes.append("no single measured cause: the layer is sensitive as a whole")
        fixes.append(f"keep {name} in higher precision (--exclude '{name}')")
    return causes, fixes
