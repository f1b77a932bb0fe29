"""The public face: ``quantize``, ``lower``, ``evaluate``. Thin; the work lives in the subpackages."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from quantwise.errors import UserError
from quantwise.fixedpoint import quantize as _fixed_point  # noqa: F401  (registers the fixed-point handler)
from quantwise.measure.env import environment
from quantwise.measure.latency import measure_latency
from quantwise.measure.memory import peak_memory
from quantwise.progress import progress_iter, status
from quantwise.quantized import QuantizedModel, artifact_size, atomic_dir
from quantwise.recipes import Recipe, get_recipe
from quantwise.runtime.torch_sim import lower_torch
from quantwise.tasks.base import Task
from quantwise.transform import schemes as _schemes  # noqa: F401  (registers the handlers)
from quantwise.transform.registry import HANDLERS, Batch, needs_calibration

RESULT_SCHEMA = "quantwise.result/1"
RUNTIMES = ("torch", "torch-int8", "onnxruntime", "integer", "tflite")


def quantize(model: nn.Module, recipe: Recipe | str, calibration_data: Sequence[Batch] | None = None) -> QuantizedModel:
    """Quantize ``model`` as ``recipe`` says; the one entry point for every scheme.

    Args:
        model: A float ``nn.Module`` (not modified).
        recipe: A recipe object or a registered name (``static-int8``, ``weight-int4`` ...).
        calibration_data: Batches of model inputs (tuples of tensors); required by static and GPTQ.

    Example:
        >>> qm = quantize(model, "static-int8", calibration_data=[(x,) for x in batches])
        >>> qm.save("out/model")
    """
    if isinstance(recipe, str):
        recipe = get_recipe(recipe)
    handler = HANDLERS.get(type(recipe))
    if handler is None:
        raise UserError(f"recipe {recipe.name!r} needs a task (it searches or trains on the task's data): use quantwise.evaluate(task, recipe), "
                        "or for your own training loop quantwise.transform.qat.prepare_qat / convert_qat")
    check_finite_weights(model)
    calib = list(calibration_data or [])
    if needs_calibration(recipe):
        if not calib:
            raise UserError(f"recipe {recipe.name} needs calibration data and the calibration set is empty: pass calibration batches")
        check_batch(model, calib[0], "calibration")
    t0 = time.perf_counter()
    qm = handler(model, recipe, calib)
    qm.info["time_to_quantize_s"] = time.perf_counter() - t0
    return qm


def build_quantized(task: Task, recipe: Recipe) -> QuantizedModel:
    """Quantize for a task; searches that need the task's validation data (mixed) go here."""
    from quantwise.recipes import MixedRecipe, QATRecipe

    if isinstance(recipe, MixedRecipe):
        from quantwise.transform.mixed import search_mixed

        return search_mixed(task, recipe)
    if isinstance(recipe, QATRecipe):
        from quantwise.train.run import build_qat

        return build_qat(task, recipe)
    return quantize(task.model, recipe, task.calibration)


def check_finite_weights(model: nn.Module) -> None:
    """Refuse NaN/Inf parameters, naming the first one."""
    for name, p in model.named_parameters():
        if p.is_floating_point() and not torch.isfinite(p).all():
            raise UserError(f"parameter {name} contains NaN or Inf: fix or retrain the model before quantizing")


def check_batch(model: nn.Module, batch: Batch, what: str) -> None:
    """Fail before any work if a batch has NaN/Inf or does not fit the model."""
    if not isinstance(batch, tuple) or not all(isinstance(t, torch.Tensor) for t in batch):
        raise UserError(f"{what} batches must be tuples of tensors, got {type(batch).__name__}")
    for t in batch:
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise UserError(f"{what} data contains NaN or Inf: clean the inputs")
    try:
        with torch.no_grad():
            model(*batch)
    except Exception as e:  # the model's own error says which shape/dtype was wrong
        shapes = ", ".join(f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}" for t in batch)
        raise UserError(f"{what} data does not fit the model (got {shapes}): {type(e).__name__}: {str(e).splitlines()[0]}") from None


def lower(qm: QuantizedModel | None, task: Task, runtime: str, workdir: Path, threads: int = 1,
          batch_sizes: Sequence[int] = (1,)) -> tuple[Any, nn.Module]:
    """Lower a QuantizedModel (None: the FP32 baseline) to ``runtime``; returns ``(runner, torch_module)``.

    ``batch_sizes`` matter to runtimes that fix the batch when converting (tflite).
    """
    if runtime == "tflite":
        from quantwise.runtime.tflite import TfliteRunner, check_tflite_available, convert
        from quantwise.runtime.tflite_lower import lower_tflite_module

        check_tflite_available()
        module, mode = lower_tflite_module(qm, task.model)
        paths = {}
        for bs in sorted({1, *batch_sizes}):
            status(f"converting to .tflite at batch {bs}")
            paths[bs] = convert(module, task.latency_input(bs), mode, workdir / f"model_b{bs}.tflite")
        return TfliteRunner(paths, threads), module
    if runtime == "integer":
        from quantwise.runtime.integer import lower_integer

        if qm is None or qm.plan is None:
            raise UserError("the integer runtime runs fixed-point models only: use --recipe fixed-point, or another runtime")
        return lower_integer(qm, workdir)
    if qm is not None and qm.plan is not None and runtime == "torch-int8":
        raise UserError("fixed point has no PyTorch int8 kernel lowering: use --runtime integer, torch or onnxruntime")
    if runtime == "torch-int8":
        from quantwise.runtime.torch_int8 import lower_torch_int8
        from quantwise.runtime.torch_rt import TorchRunner

        if qm is None:
            raise RuntimeError("torch-int8 runs quantized models; FP32 runs in the torch runtime")
        module = lower_torch_int8(qm)
        return TorchRunner(module, qm.save(workdir / "quantized"), threads, runtime="torch-int8"), module
    if qm is not None and qm.plan is not None:
        from quantwise.fixedpoint.simulate import FixedPointModule

        module = FixedPointModule(qm.plan, "exact" if runtime == "torch" else "qdq")
    else:
        module = lower_torch(qm) if qm is not None else task.model
    if runtime == "torch":
        from quantwise.runtime.torch_rt import TorchRunner

        if qm is not None:
            artifact = qm.save(workdir / "quantized")
        else:
            artifact = workdir / "model.safetensors"
            save_file({k: v.contiguous() for k, v in task.model.state_dict().items()}, str(artifact))
        return TorchRunner(module, artifact, threads), module
    if runtime == "onnxruntime":
        from quantwise.runtime.onnxrt import OrtRunner, check_onnx_available, export_onnx

        check_onnx_available()
        if qm is not None and qm.cast == "bf16":
            raise RuntimeError("bf16 has no ONNX Runtime CPU kernels: run bf16 with --runtime torch")
        example = task.latency_input(2)
        path = export_onnx(module, example, workdir / "model.onnx", task.input_names, task.dynamic_axes)
        return OrtRunner(path, task.input_names, threads), module
    raise UserError(f"unknown runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")


def run_outputs(runner: Any, batches: Sequence[Batch], label: str) -> np.ndarray:
    """Concatenated outputs of ``runner`` over ``batches``."""
    return np.concatenate([runner.run(b) for b in progress_iter(batches, label)])


def evaluate(
    task: Task,
    recipe: Recipe | str | None = None,
    runtime: str = "torch",
    out: str | os.PathLike[str] | None = None,
    threads: int = 1,
    batch_sizes: tuple[int, ...] = (1, 32),
    measure_memory: bool = True,
    latency_seconds: float = 5.0,
    quantized: QuantizedModel | None = None,
) -> dict[str, Any]:
    """Quantize (unless ``recipe`` is None: FP32), lower, run and measure; returns the result record.

    With ``out``, the artifacts and ``result.json`` are written there (atomically: a temporary
    folder renamed when complete). ``quantized`` reuses a QuantizedModel already built for ``recipe``.
    """
    if isinstance(recipe, str):
        recipe = None if recipe == "fp32" else get_recipe(recipe)
    if runtime not in RUNTIMES:
        raise UserError(f"unknown runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    check_batch(task.model, task.eval_batches[0], "evaluation")
    torch.set_num_threads(threads)
    name = recipe.name if recipe else "fp32"
    tmp = Path(tempfile.mkdtemp(prefix="quantwise-"))
    try:
        qm = quantized if quantized is not None else (build_quantized(task, recipe) if recipe else None)
        runner, module = lower(qm, task, runtime, tmp, threads, batch_sizes)
        outputs = run_outputs(runner, task.eval_batches, f"{task.name} · {name} · {runtime}: evaluating")
        record = _record(task, name, recipe, runtime, qm, runner, task.score(outputs), threads)
        status("measuring latency")
        for bs in batch_sizes:
            batch = task.latency_input(bs)
            record["latency_ms"][f"batch_{bs}"] = measure_latency(lambda b=batch: runner.run(b), max_seconds=latency_seconds)
        if measure_memory:
            status("measuring peak memory in a separate process")
            record["peak_memory_bytes"] = _memory(runtime, runner, module, task, tmp, threads)
        if out is not None:
            _publish(tmp, Path(out), record)
        if hasattr(runner, "close"):
            runner.close()
        return record
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _record(task: Task, name: str, recipe: Recipe | None, runtime: str, qm: QuantizedModel | None, runner: Any,
            metrics: dict[str, Any], threads: int) -> dict[str, Any]:
    return {
        "schema": RESULT_SCHEMA,
        "task": task.name,
        "recipe": name,
        "recipe_params": recipe.to_dict() if recipe else {"recipe": "fp32"},
        "runtime": runtime,
        "status": "ok",
        "metrics": metrics,
        "latency_ms": {},
        "size_bytes": artifact_size(runner.artifact),
        "peak_memory_bytes": None,
        "time_to_quantize_s": qm.info.get("time_to_quantize_s", 0.0) if qm else 0.0,
        "integer_ops": runner.integer_ops(),
        "fixed_point": runner.report() if getattr(runner, "runtime", "") == "integer" else None,
        "tflite": runner.report(qm) if getattr(runner, "runtime", "") == "tflite" else None,
        "quantized_layers": sorted(qm.layers) if qm else [],
        "float_layers": qm.skipped if qm else {},
        "info": {k: v for k, v in (qm.info.items() if qm else []) if k != "time_to_quantize_s"},
        "env": environment(threads),
    }


def _memory(runtime: str, runner: Any, module: nn.Module, task: Task, tmp: Path, threads: int) -> int | None:
    if runtime in ("onnxruntime", "tflite"):
        artifact = runner.artifact
    else:
        artifact = tmp / "module.pt"
        torch.save(module, artifact)
    return peak_memory(runtime, artifact, task.latency_input(1), task.input_names, threads)


def _publish(tmp: Path, out: Path, record: dict[str, Any]) -> None:
    import json

    (tmp / "module.pt").unlink(missing_ok=True)
    for f in tmp.glob("*.optimized.onnx"):
        f.unlink()
    (tmp / "result.json").write_text(json.dumps(record, indent=2))
    with atomic_dir(out) as staged:
        shutil.copytree(tmp, staged, dirs_exist_ok=True)
