"""Post-training quantization benchmark: every quantwise scheme in each runtime, beside the peers,
in one run, 1 thread. Prints a markdown table (paste it into benchmarks/README.md).

    .venv/bin/python benchmarks/ptq.py [--tasks bbc-minilm,mnist-cnn] [--seconds 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from peers import ort_peers, torch_ao_dynamic

from quantwise.api import evaluate
from quantwise.measure.env import environment
from quantwise.recipes import get_recipe
from quantwise.tasks import load_task

SCHEMES = [
    ("fp32", None),
    ("fp16", get_recipe("fp16")),
    ("dynamic-int8", get_recipe("dynamic-int8")),
    ("dynamic-int8 per-token", get_recipe("dynamic-int8", activations="per-token")),
    ("static-int8 minmax", get_recipe("static-int8")),
    ("static-int8 percentile", get_recipe("static-int8", calibration="percentile")),
    ("static-int8 entropy", get_recipe("static-int8", calibration="entropy")),
    ("static-int8 mse", get_recipe("static-int8", calibration="mse")),
    ("weight-int8", get_recipe("weight-int8")),
    ("weight-int4 g32 rtn", get_recipe("weight-int4", group_size=32)),
    ("weight-int4 g32 gptq", get_recipe("weight-int4", group_size=32, method="gptq")),
]


def row(name: str, rec: dict, base_ort: float) -> str:
    m, lat = rec["metrics"], rec["latency_ms"]
    b1, b32 = lat.get("batch_1"), lat.get("batch_32")
    cos = f"{m['cosine_to_fp32']:.4f}" if "cosine_to_fp32" in m else "-"
    ops = rec.get("integer_ops") or {}
    return (
        f"| {name} | {rec['runtime']} | {100 * m['accuracy']:.2f} | {m['f1_macro']:.4f} | {cos} | "
        f"{b1['p50']:.2f} / {b1['p90']:.2f} | {b32['p50']:.1f} / {b32['p90']:.1f} | {base_ort / b1['p50']:.2f}x | "
        f"{rec['size_bytes'] / 1e6:.2f} | {rec['time_to_quantize_s']:.1f} | {ops.get('integer', 0)}/{ops.get('total', 0)} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="bbc-minilm,mnist-cnn")
    ap.add_argument("--runtimes", default="onnxruntime,torch-int8,torch")
    ap.add_argument("--seconds", type=float, default=5.0, help="max timed seconds per latency measurement")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    env = environment(1)
    print(
        f"machine: {env['cpu']}, {env['cores']} cores, flags {', '.join(env['cpu_flags'])}; 1 thread; "
        f"torch {env['libraries']['torch']}, onnxruntime {env['libraries']['onnxruntime']}\n"
    )
    for tname in args.tasks.split(","):
        task = load_task(tname)
        lines = []
        base = None
        for rt in args.runtimes.split(","):
            for name, recipe in SCHEMES:
                if rt == "torch-int8" and (recipe is None or recipe.name not in ("dynamic-int8", "static-int8")):
                    continue  # no PyTorch int8 kernels for the other formats (see runtime/torch_int8.py)
                rec = evaluate(task, recipe, rt, measure_memory=False, latency_seconds=args.seconds)
                if base is None:
                    base = rec["latency_ms"]["batch_1"]["p50"]  # ONNX Runtime FP32, the first row
                lines.append(row(name, rec, base))
        with tempfile.TemporaryDirectory() as d:
            for rec in ort_peers(task, Path(d), (1, 32), args.seconds) + [
                torch_ao_dynamic(task, Path(d), (1, 32), args.seconds)
            ]:
                lines.append(row(f"peer: {rec['recipe']}", rec, base))
        print(f"### {tname}\n")
        print(
            "| scheme | runtime | accuracy % | macro F1 | cosine to FP32 | b1 p50 / p90 ms | b32 p50 / p90 ms | b1 speedup vs ORT FP32 | size MB | quantize s | int ops |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        print("\n".join(lines) + "\n", flush=True)


if __name__ == "__main__":
    main()
