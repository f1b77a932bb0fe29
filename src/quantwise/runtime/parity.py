"""Every quantized record carries how closely its runtime computed what the simulation says.

The simulation (``torch_rt.simulation_module``) is what quantwise's accuracy figures and its
explanations reason about; a runtime runs its own kernels (integer GEMMs, MatMulNBits, llama.cpp's
blocks with activations rounded to 8 bits, LiteRT's requantization). Rounding-boundary flips make
the two differ a little; a runtime that computes another model differs a lot. On the first
evaluation batch (a causal LM's first ``LM_TOKENS`` tokens), the record keeps the largest
difference relative to the simulation's output range and, for outputs with a class (or vocabulary)
axis, how often the two pick the same top-1. Below ``MIN_AGREEMENT`` the simulation is run
``FLOOR_DRAWS`` more times with the inputs of its quantized layers moved by ``NOISE`` (relative,
seeded; the size of the last-bit differences between two runtimes' float kernels): a format whose
outputs sit on rounding boundaries changes its own top-1 under that noise as often as the runtime
disagrees with it (dynamic per-tensor W8A8 on SmolLM2: the simulation keeps 68% of its top-1 picks
under noise, ONNX Runtime picks the same as the simulation on 68%). The floor is the draws' lowest
agreement, and one draw differs from another by sampling alone (two binomial standard deviations
over the compared positions, ``sampling_slack``): a runtime within that of the floor computes what
the simulation says as closely as the simulation can say it (``status`` ``ok``,
``noise_floor_agreement``, ``reason``); only a runtime that agrees less ``differs``, and compare
prints it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from quantwise.quantized import QuantizedModel
from quantwise.runtime.torch_sim import first_tensor

LM_TOKENS = 128
MIN_AGREEMENT = 0.9  # rounding flips near-ties, not one decision in ten
NOISE = 1e-6  # relative noise on each quantized layer's input: float kernels' last-bit differences
FLOOR_DRAWS = 4  # noise draws; one alone put a faithful runtime 0.07 below it on SmolLM2 (0.61 vs 0.68)


def sampling_slack(agreement: float, positions: int) -> float:
    """Two binomial standard deviations of a top-1 agreement measured over ``positions`` picks."""
    return 2.0 * float(np.sqrt(max(agreement * (1.0 - agreement), 0.0) / max(positions, 1)))


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
    sim = simulation_module(qm).eval()
    with torch.inference_mode():
        ref = first_tensor(sim(*batch))
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
        agree = float(np.mean(got.argmax(-1) == want.argmax(-1)))
        out["top1_agreement"] = agree
        if agree < MIN_AGREEMENT:
            floor = _noise_floor(sim, qm, batch, want)
            out["noise_floor_agreement"] = floor
            positions = int(np.prod(want.shape[:-1]))
            if floor is not None and agree >= floor - sampling_slack(floor, positions):
                out["reason"] = (
                    f"{runtime} picks the simulation's top-1 on {100 * agree:.0f}%, and the simulation itself on "
                    f"{100 * floor:.0f}% when its layers' inputs move by {NOISE:g}: this format's outputs sit on "
                    "rounding boundaries (a fragile format, not a runtime computing another model)"
                )
            else:
                out["status"] = "differs"
                out["reason"] = f"{runtime} and the simulation pick the same top-1 on {100 * agree:.0f}% only" + (
                    f" (the simulation under {NOISE:g} noise: {100 * floor:.0f}%)" if floor is not None else ""
                )
    return out


def _noise_floor(
    sim: torch.nn.Module, qm: QuantizedModel, batch: tuple[torch.Tensor, ...], want: np.ndarray
) -> float | None:
    """The lowest top-1 agreement of the simulation ``sim`` with itself over ``FLOOR_DRAWS`` runs with each
    quantized layer's input moved by ``NOISE`` (relative, seeded): how stable this format's decisions
    are under float rounding."""
    gen = torch.Generator().manual_seed(0)

    def nudge(_m: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        if not (isinstance(x, torch.Tensor) and x.is_floating_point()):
            return args
        return (x * (1 + NOISE * torch.randn(x.shape, generator=gen)), *args[1:])

    hooks = [m.register_forward_pre_hook(nudge) for n, m in sim.named_modules() if n in qm.layers]
    if not hooks:
        return None
    agreements = []
    try:
        with torch.inference_mode():
            for _ in range(FLOOR_DRAWS):
                moved = first_tensor(sim(*batch))
                if moved is None:
                    return None
                agreements.append(float(np.mean(moved.float().numpy().argmax(-1) == want.argmax(-1))))
    finally:
        for h in hooks:
            h.remove()
    return min(agreements)
