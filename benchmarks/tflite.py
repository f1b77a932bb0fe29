"""TFLite (LiteRT) on both tasks: quantwise's formats converted with its own parameters, beside the
peer ai-edge-quantizer's dynamic-range recipe applied to the same FP32 .tflite. One run, 1 thread.

    .venv/bin/python benchmarks/tflite.py [--tasks mnist-cnn,bbc-minilm] [--seconds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from quantwise.api import evaluate, lower
from quantwise.measure.env import environment
from quantwise.measure.latency import measure_latency
from quantwise.recipes import get_recipe
from quantwise.runtime.tflite import TfliteRunner
from quantwise.tasks import load_task

FORMATS = [
    ("fp32", None),
    ("fp16", get_recipe("fp16")),
    ("dynamic-int8", get_recipe("dynamic-int8")),
    ("static-int8-full (minmax)", get_recipe("static-int8", quantize_outputs=True)),
    ("static-int8-full (mse)", get_recipe("static-int8", quantize_outputs=True, calibration="mse")),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="mnist-cnn,bbc-minilm")
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    print(f"{environment(1).get('cpu')}, LiteRT interpreter (default resolver), 1 thread\n")
    print(
        "| task | format | accuracy % | Δ pts | b1 p50 ms | b32 p50 ms | speedup b1 vs FP32 .tflite | size MB | int8 heavy ops | our scales in file |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.tasks.split(","):
        task = load_task(name)
        base = None
        for label, recipe in FORMATS:
            r = evaluate(task, recipe, "tflite", threads=1, latency_seconds=args.seconds, measure_memory=False)
            base = base or r
            _row(name, label, r, base)
        _peer(name, task, base, args.seconds)


def _row(task: str, label: str, r: dict, base: dict) -> None:
    lat, ops = r["latency_ms"], r["integer_ops"]
    sc = (r.get("tflite") or {}).get("quantwise_scales") or {}
    own = (
        f"{len(sc['matched'])}/{sc['layers']}"
        + (f", +{len(sc['converter_quantized_weights'])} converter's" if sc.get("converter_quantized_weights") else "")
        if sc.get("layers")
        else "-"
    )
    print(
        f"| {task} | {label} | {100 * r['metrics']['accuracy']:.2f} | {100 * (r['metrics']['accuracy'] - base['metrics']['accuracy']):+.2f} | "
        f"{lat['batch_1']['p50']:.2f} | {lat['batch_32']['p50']:.1f} | {base['latency_ms']['batch_1']['p50'] / lat['batch_1']['p50']:.2f}x | "
        f"{r['size_bytes'] / 1e6:.2f} | {ops['integer']}/{ops['total']} | {own} |",
        flush=True,
    )


def _peer(name: str, task, base: dict, seconds: float) -> None:
    from ai_edge_quantizer import quantizer, recipe

    with tempfile.TemporaryDirectory() as d:
        fp32, _ = lower(None, task, "tflite", Path(d), batch_sizes=(1, 32))
        paths = {}
        t0 = time.perf_counter()
        for bs, p in fp32.paths.items():
            q = quantizer.Quantizer(str(p), recipe.dynamic_wi8_afp32())
            out = Path(d) / f"peer_b{bs}.tflite"
            q.quantize().export_model(str(out))
            paths[bs] = out
        t_q = time.perf_counter() - t0
        runner = TfliteRunner(paths, 1)
        out = np.concatenate([runner.run(b) for b in task.eval_batches])
        r = {
            "metrics": task.score(out),
            "integer_ops": runner.integer_ops(),
            "size_bytes": paths[1].stat().st_size,
            "latency_ms": {
                f"batch_{bs}": measure_latency(lambda b=task.latency_input(bs): runner.run(b), max_seconds=seconds)
                for bs in (1, 32)
            },
        }
        _row(name, f"peer: ai-edge-quantizer dynamic_wi8_afp32 ({t_q:.1f} s)", r, base)


if __name__ == "__main__":
    main()
