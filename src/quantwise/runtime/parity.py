"""Every quantized record carries how closely its runtime computed what the simulation says.

The simulation (``torch_rt.simulation_module``) is what quantwise's accuracy figures and its
explanations reason about; a runtime runs its own kernels (integer GEMMs, MatMulNBits, llama.cpp's
blocks with activations rounded to 8 bits, LiteRT's requantization). Rounding-boundary flips make
the two differ a little; a runtime that computes another model differs a lot. On the first
evaluation batch (a causal LM's first ``LM_TOKENS`` tokens), the record keeps the largest
difference relative to the simulation's output range and, for outputs with a class (or vocabulary)
axis, how often the two pick the same top-1. Below ``MIN_AGREEMENT`` the record says ``differs``
and compare prints it: the figures of that format are the runtime's, not the simulation's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from quantwise.quantized import QuantizedModel
from quantwise.runtime.torch_sim import first_tensor

LM_TOKENS = 128
MIN_AGREEMENT = 0.9  # rounding flips near-ties, not one decision in ten


def runtime_vs_simulation(qm: QuantizedModel, task: Any, runner: Any, runtime: str) -> dict[str, Any] | None:
    """``info.runtime_vs_simulation`` for a quantized record (None in ``torch``: it is the simulation)."""
    if runtime == "torch":
        return None
    if getattr(task.model, "is_onnx_graph", False):
        return {"status": "n/a", "reason": "an ONNX graph is quantized in ONNX Runtime itself: no PyTorch simulation"}
    from quantwise.runtime.torch_rt import simulation_module

    batch = task.eval_batches[0]
    if task.generation is not None:
        batch = tuple(t[:, :LM_TOKENS] for t in batch)
    with torch.inference_mode():
        ref = first_tensor(simulation_module(qm).eval()(*batch))
    if ref is None:
        return {"status": "n/a", "reason": "the model's output is not a tensor"}
    want = ref.float().numpy()
    got = np.asarray(runner.run(batch), dtype=np.float32)
    if got.shape != want.shape:
        return {"status": "differs", "reason": f"{runtime} gives shape {got.shape}, the simulation {want.shape}"}
    out: dict[str, Any] = {
        "status": "ok",
        "compared": f"first evaluation batch{f', first {LM_TOKENS} tokens' if task.generation is not None else ''}",
        "max_rel_diff": float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12)),
    }
    if want.ndim >= 2 and want.shape[-1] > 1:
        out["top1_agreement"] = float(np.mean(got.argmax(-1) == want.argmax(-1)))
        if out["top1_agreement"] < MIN_AGREEMENT:
            out["status"] = "differs"
            out["reason"] = (
                f"{runtime} and the simulation pick the same top-1 on {100 * out['top1_agreement']:.0f}% only"
            )
    return out
