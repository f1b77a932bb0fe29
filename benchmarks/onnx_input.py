"""An ONNX file in: bbc-minilm's encoder exported to ONNX, quantized from the graph by quantwise,
against the same formats built from the PyTorch module and against ONNX Runtime's own
``quantize_static`` (and ``quantize_dynamic``) on the same file with the same calibration
documents. Every row is scored by the task's own code (the logistic regression on the
embeddings) on the same 668 test documents and timed in ONNX Runtime, one thread, in one run.

    .venv/bin/python benchmarks/onnx_input.py [--limit N]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from quantwise.api import evaluate, run_outputs
from quantwise.measure.env import environment
from quantwise.measure.latency import measure_latency
from quantwise.onnxmodel import OnnxGraphModule
from quantwise.quiet import torch_threads
from quantwise.recipes import get_recipe
from quantwise.runtime.onnxrt import OrtRunner, export_onnx
from quantwise.tasks import load_task
from quantwise.tasks.base import Task

FORMATS = [
    ("static-int8-minmax", "static-int8", {"calibration": "minmax"}),
    ("static-int8-percentile", "static-int8", {"calibration": "percentile"}),
    ("static-int8-mse", "static-int8", {"calibration": "mse"}),
    ("dynamic-int8", "dynamic-int8", {}),
    ("weight-int4-g32", "weight-int4", {"group_size": 32}),
]


def peer_static(src: Path, out: Path, task: Task, per_channel: bool) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{n: t.numpy() for n, t in zip(task.input_names, b)} for b in task.calibration])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    quantize_static(str(src), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel)
    return out


def peer_dynamic(src: Path, out: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(out), weight_type=QuantType.QInt8)
    return out


def measure_file(task: Task, path: Path) -> dict[str, Any]:
    runner = OrtRunner(path, task.input_names, threads=1)
    with torch_threads(1):
        m = task.score(run_outputs(runner, task.eval_batches, path.stem, task))
        lat = {
            bs: measure_latency(lambda b=task.latency_input(bs): runner.run(b), min_seconds=0.25, max_seconds=3)["p50"]
            for bs in (1, 32)
        }
    ops = runner.integer_ops()
    runner.close()
    return {
        "accuracy": m["accuracy"],
        "lat": lat,
        "mb": path.stat().st_size / 1e6,
        "int": f"{ops['integer']}/{ops['total']}",
    }


def from_record(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "accuracy": r["metrics"]["accuracy"],
        "lat": {1: r["latency_ms"]["batch_1"]["p50"], 32: r["latency_ms"]["batch_32"]["p50"]},
        "mb": r["size_bytes"] / 1e6,
        "int": f"{r['integer_ops']['integer']}/{r['integer_ops']['total']}",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    torch_task = load_task("bbc-minilm", limit=args.limit)
    rows: list[tuple[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as d:
        src = export_onnx(
            torch_task.model,
            torch_task.latency_input(2),
            Path(d) / "minilm.onnx",
            torch_task.input_names,
            torch_task.dynamic_axes,
        )
        onnx_task = dataclasses.replace(
            torch_task,
            model=OnnxGraphModule(src),
            build_model=lambda: OnnxGraphModule(src),
            info={**torch_task.info, "kind": "onnx-graph"},
        )
        kw = {"threads": 1, "batch_sizes": (1, 32), "measure_memory": False, "latency_seconds": 3.0}
        rows.append(("fp32 (ONNX file)", from_record(evaluate(onnx_task, None, "onnxruntime", **kw))))
        for fid, recipe, over in FORMATS:
            rec = get_recipe(recipe, **over)
            rows.append(
                (f"{fid}: quantwise from the ONNX graph", from_record(evaluate(onnx_task, rec, "onnxruntime", **kw)))
            )
            rows.append(
                (
                    f"{fid}: quantwise from the PyTorch module",
                    from_record(evaluate(torch_task, rec, "onnxruntime", **kw)),
                )
            )
        rows.append(
            (
                "ORT quantize_static (defaults: per-tensor, minmax)",
                measure_file(onnx_task, peer_static(src, Path(d) / "ort_s.onnx", onnx_task, False)),
            )
        )
        rows.append(
            (
                "ORT quantize_static (per_channel=True)",
                measure_file(onnx_task, peer_static(src, Path(d) / "ort_sc.onnx", onnx_task, True)),
            )
        )
        rows.append(
            ("ORT quantize_dynamic (QInt8)", measure_file(onnx_task, peer_dynamic(src, Path(d) / "ort_d.onnx")))
        )
    base = rows[0][1]
    env = environment(1)
    print(
        f"bbc-minilm encoder as ONNX, {len(torch_task.labels if torch_task.labels is not None else [])} test documents, one thread; {env.get('cpu', '')}"
    )
    print("| model | accuracy | Δ pts vs FP32 | batch 1 ms (speedup) | batch 32 ms (speedup) | size MB | int ops |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(
            f"| {name} | {100 * r['accuracy']:.2f}% | {100 * (r['accuracy'] - base['accuracy']):+.2f} | "
            f"{r['lat'][1]:.2f} ({base['lat'][1] / r['lat'][1]:.2f}x) | {r['lat'][32]:.1f} ({base['lat'][32] / r['lat'][32]:.2f}x) | "
            f"{r['mb']:.1f} | {r['int']} |"
        )


if __name__ == "__main__":
    main()
