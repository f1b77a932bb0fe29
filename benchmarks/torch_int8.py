"""The ``torch-int8`` runtime (oneDNN's ``qlinear_pointwise`` / ``qconv2d_pointwise``, fed the
QuantizedModel's own uint8/int8 values) against PyTorch FP32 and PyTorch's legacy fbgemm int8
kernels (``torch.ao.quantization.quantize_dynamic``, deprecated) in one run, 1 thread, batch 1
and 32, with how far each is from the simulation of the same QuantizedModel. Prints a markdown
table (paste it into benchmarks/README.md).

    .venv/bin/python benchmarks/torch_int8.py [--tasks mnist-cnn,bbc-minilm] [--seconds 3]
"""

from __future__ import annotations

import argparse
import copy
import warnings
from typing import Any

import torch

from quantwise import get_recipe, quantize
from quantwise.measure.env import environment
from quantwise.measure.latency import measure_latency
from quantwise.runtime.torch_int8 import lower_torch_int8
from quantwise.runtime.torch_sim import lower_torch
from quantwise.tasks import load_task


def _ms(module: Any, task: Any, batch: int, seconds: float) -> float:
    x = task.latency_input(batch)
    with torch.inference_mode():
        return float(measure_latency(lambda: module(*x), max_seconds=seconds)["p50"])


def _gap(module: Any, sim: Any, task: Any) -> str:
    """Largest difference to the simulation on the first evaluation batch, relative to its range."""
    with torch.inference_mode():
        want, got = sim(*task.eval_batches[0]), module(*task.eval_batches[0])
    return f"{float((got - want).abs().max() / want.abs().max().clamp(min=1e-12)):.1e}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="mnist-cnn,bbc-minilm")
    ap.add_argument("--seconds", type=float, default=3.0, help="max timed seconds per latency measurement")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    env = environment(1)
    print(f"machine: {env['cpu']}, {env['cores']} cores, flags {', '.join(env['cpu_flags'])}; 1 thread; "
          f"torch {env['libraries']['torch']}\n")  # fmt: skip
    print("| task | format | kernels | b1 p50 ms | b32 p50 ms | b1 vs FP32 | b32 vs FP32 | max diff to simulation |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.tasks.split(","):
        task = load_task(name, limit=64)
        fp32 = {b: _ms(task.model, task, b, args.seconds) for b in (1, 32)}
        rows: list[tuple[str, str, Any, str]] = [("fp32", "PyTorch float", task.model, "-")]
        for fmt, recipe in [
            ("dynamic-int8", get_recipe("dynamic-int8")),
            ("dynamic-int8 per-token", get_recipe("dynamic-int8", activations="per-token")),
            ("static-int8", get_recipe("static-int8")),
        ]:
            qm = quantize(task.model, recipe, task.calibration)
            module = lower_torch_int8(qm).eval()
            rows.append((fmt, "quantwise torch-int8 (oneDNN)", module, _gap(module, lower_torch(qm).eval(), task)))
        from torch.ao.quantization import quantize_dynamic

        legacy = quantize_dynamic(copy.deepcopy(task.model), {torch.nn.Linear}, dtype=torch.qint8).eval()
        rows.append(("dynamic-int8", "peer: torch.ao quantize_dynamic (fbgemm)", legacy, "own weights"))
        for fmt, kernels, module, gap in rows:
            ms = fp32 if module is task.model else {b: _ms(module, task, b, args.seconds) for b in (1, 32)}
            print(
                f"| {name} | {fmt} | {kernels} | {ms[1]:.2f} | {ms[32]:.1f} | {fp32[1] / ms[1]:.2f}x | "
                f"{fp32[32] / ms[32]:.2f}x | {gap} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
