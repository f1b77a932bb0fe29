"""Reference points users would otherwise pick, measured in the same run as quantwise.

- ONNX Runtime ``quantize_dynamic`` (per-channel) and ``quantize_static`` (QDQ, per-channel,
  MinMax) applied to the same FP32 ONNX export quantwise uses;
- ``torch.ao.quantization.quantize_dynamic`` (Linear, qint8) on the float model.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantwise.api import run_outputs
from quantwise.measure.latency import measure_latency
from quantwise.quantized import artifact_size
from quantwise.runtime.onnxrt import OrtRunner, export_onnx
from quantwise.runtime.torch_rt import TorchRunner
from quantwise.tasks.base import Task


def _measure(
    task: Task, runner: Any, name: str, runtime: str, t_quant: float, batch_sizes: tuple[int, ...], seconds: float
) -> dict[str, Any]:
    out = run_outputs(runner, task.eval_batches, f"{task.name} · {name}")
    rec = {
        "task": task.name,
        "recipe": name,
        "runtime": runtime,
        "metrics": task.score(out),
        "latency_ms": {},
        "size_bytes": artifact_size(runner.artifact),
        "time_to_quantize_s": t_quant,
        "integer_ops": runner.integer_ops(),
    }
    for bs in batch_sizes:
        b = task.latency_input(bs)
        rec["latency_ms"][f"batch_{bs}"] = measure_latency(lambda b=b: runner.run(b), max_seconds=seconds)
    return rec


def ort_peers(task: Task, workdir: Path, batch_sizes: tuple[int, ...], seconds: float) -> list[dict[str, Any]]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = export_onnx(
        task.model, task.latency_input(2), workdir / "peer_fp32.onnx", task.input_names, task.dynamic_axes
    )

    def dynamic() -> Path:
        out = workdir / "peer_ort_dynamic.onnx"
        quantize_dynamic(str(fp32), str(out), per_channel=True, weight_type=QuantType.QInt8)
        return out

    recs = []
    for name, build in (
        ("ort quantize_dynamic", dynamic),
        ("ort quantize_static (QDQ)", lambda: ort_static_file(fp32, workdir / "peer_ort_static.onnx", task)),
    ):
        t0 = time.perf_counter()
        path = build()
        runner = OrtRunner(path, task.input_names)
        recs.append(_measure(task, runner, name, "onnxruntime", time.perf_counter() - t0, batch_sizes, seconds))
    return recs


def ort_static_file(fp32: Path, out: Path, task: Task) -> Path:
    """ONNX Runtime's ``quantize_static`` on ``fp32`` (QDQ, per-channel, U8S8, MinMax) calibrated on the task's data."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(task.calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            b = next(self.it, None)
            return None if b is None else {n: t.numpy() for n, t in zip(task.input_names, b)}

    quantize_static(
        str(fp32),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return out


def torch_ao_dynamic(task: Task, workdir: Path, batch_sizes: tuple[int, ...], seconds: float) -> dict[str, Any]:
    from torch.ao.quantization import quantize_dynamic

    t0 = time.perf_counter()
    model = quantize_dynamic(copy.deepcopy(task.model), {torch.nn.Linear}, dtype=torch.qint8)
    t = time.perf_counter() - t0
    path = workdir / "peer_torch_ao_dynamic.pt"
    torch.save(model.state_dict(), path)
    return _measure(task, TorchRunner(model, path), "torch.ao quantize_dynamic", "torch", t, batch_sizes, seconds)
