"""The public face: ``quantize``, ``lower``, ``evaluate``. Thin; the work lives in the subpackages."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from quantwise.errors import UserError
from quantwise.measure.latency import StageClock
from quantwise.measure.record import add_parity, measure_into, new_record
from quantwise.progress import progress_iter
from quantwise.quantized import QuantizedModel, atomic_dir
from quantwise.quiet import torch_threads
from quantwise.recipes import Recipe, get_recipe
from quantwise.records import Record
from quantwise.runtime.registry import check_can_run, get_runtime
from quantwise.tasks.base import Task
from quantwise.tasks.check import check_task
from quantwise.transform.quantize import check_batch, check_finite_weights, quantize_model
from quantwise.transform.registry import Batch

__all__ = ["check_batch", "check_finite_weights", "evaluate", "lower", "quantize", "build_quantized", "check_task"]


def quantize(
    model: nn.Module | torch.export.ExportedProgram | str | os.PathLike[str],
    recipe: Recipe | str,
    calibration_data: Sequence[Batch] | None = None,
) -> QuantizedModel:
    """Quantize ``model`` as ``recipe`` says; the one entry point for every scheme.

    Args:
        model: A float ``nn.Module`` (not modified), a ``torch.export`` program (its Conv/Linear/
            BatchNorm/ReLU calls are lifted into modules first, checked against the program on
            its saved example inputs), or the path of a ``.onnx`` file.
        recipe: A recipe object or a registered name (``static-int8``, ``weight-int4`` ...).
        calibration_data: Batches of model inputs (tuples of tensors); required by static and GPTQ.

    Example:
        >>> qm = quantize(model, "static-int8", calibration_data=[(x,) for x in batches])
        >>> qm.save("out/model")
    """
    if isinstance(model, (str, os.PathLike)) and str(model).lower().endswith(".onnx"):
        from quantwise.onnxmodel import OnnxGraphModule

        model = OnnxGraphModule(model)  # its graph is quantized directly; lower with runtime "onnxruntime"
    if isinstance(model, torch.export.ExportedProgram):
        from quantwise.transform.lift import lift_program

        model, _lifted = lift_program(model)  # its Conv/Linear/BatchNorm/ReLU calls as modules
    if not isinstance(model, nn.Module):
        raise UserError(
            f"quantize takes an nn.Module, a torch.export program or the path of a .onnx file, got {type(model).__name__}: "
            "for TorchScript pass the nn.Module itself; for TensorFlow convert to ONNX with tf2onnx"
        )
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    if getattr(model, "is_onnx_graph", False) and recipe.kind == "fixed-point" and calibration_data:
        from quantwise.transform.onnx_import import import_graph

        model = import_graph(model, calibration_data[0])  # fixed point starts from PyTorch layers (checked)
    qm = quantize_model(model, recipe, calibration_data)  # subclassed layers are captured as a graph there
    if calibration_data:
        from quantwise.runtime.torch_sim import check_fidelity

        check_fidelity(qm, calibration_data[0])
    return qm


def build_quantized(task: Task, recipe: Recipe) -> QuantizedModel:
    """Quantize for a task; searches that need the task's validation data (mixed) go here."""
    from quantwise.errors import Unsupported
    from quantwise.recipes import MixedRecipe, QATRecipe

    if task.info.get("kind") == "causal-lm" and isinstance(recipe, QATRecipe):
        raise Unsupported(
            f"{recipe.name} is not built for causal LMs yet: use `quantwise explain` to find the sensitive blocks "
            "and --exclude them from a post-training recipe"
        )
    if (
        task.info.get("kind") == "causal-lm"
        and isinstance(recipe, MixedRecipe)
        and recipe.optimize == "latency"
        and recipe.base == "static-int8"
    ):
        raise Unsupported(
            "mixed on a causal LM builds on dynamic W8A8 or on INT4/INT8 weights, not on static-int8: "
            "pass --base dynamic-int8, or --optimize size"
        )
    if not isinstance(recipe, (MixedRecipe, QATRecipe)):
        return quantize(task.model, recipe, task.calibration)  # the fidelity guard runs inside
    if isinstance(recipe, MixedRecipe):
        from quantwise.pipeline.mixed import search_mixed

        qm = search_mixed(task, recipe)
    else:
        from quantwise.train.run import build_qat

        qm = build_qat(task, recipe)
    if task.calibration:  # the searched or trained model passes the same fidelity guard
        from quantwise.runtime.torch_sim import check_fidelity

        check_fidelity(qm, task.calibration[0])
    return qm


def lower(
    qm: QuantizedModel | None,
    task: Task,
    runtime: str,
    workdir: Path,
    threads: int = 1,
    batch_sizes: Sequence[int] = (1,),
) -> tuple[Any, nn.Module]:
    """Lower a QuantizedModel (None: the FP32 baseline) to ``runtime``; returns ``(runner, torch_module)``.

    The runtime's capability check runs first: a model it cannot run faithfully raises
    :class:`~quantwise.errors.Unsupported` with its reason. ``batch_sizes`` matter to runtimes
    that fix the batch when converting (tflite).
    """
    check_can_run(runtime, qm)
    graph = getattr(task.model, "is_onnx_graph", False)
    if graph and runtime != "onnxruntime" and not (runtime == "tflite" and getattr(task.model, "tf_source", None)):
        from quantwise.errors import Unsupported

        raise Unsupported(
            f"{runtime}: the model is an ONNX graph, quantized and run in ONNX Runtime: use --runtime onnxruntime, "
            "or pass quantwise.tasks.imported.imported_task(task) (its checked PyTorch import, as the CLI does)"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    return get_runtime(runtime).lower(qm, task, workdir, threads, batch_sizes)


def run_outputs(
    runner: Any, batches: Sequence[Batch], label: str, task: Task | None = None, first: int = 0
) -> np.ndarray:
    """Concatenated outputs of ``runner`` over ``batches`` (each first shrunk by ``task.reduce`` if
    it has one; ``first``: the index of ``batches[0]`` among the task's evaluation batches)."""
    reduce = task.reduce if task is not None else None
    outs = []
    for i, b in enumerate(progress_iter(batches, label), start=first):
        out = runner.run(b)
        outs.append(reduce(i, b, out) if reduce is not None else out)
    return np.concatenate(outs)


def shard_outputs(
    task: Task, quantized: QuantizedModel | None, runtime: str, start: int, stop: int, threads: int = 1
) -> np.ndarray:
    """The outputs on evaluation batches ``start:stop`` alone, lowered afresh: one shard of a test
    set split across workers; the shards, concatenated in order, are what ``evaluate`` scores."""
    tmp = Path(tempfile.mkdtemp(prefix="quantwise-"))
    try:
        with torch_threads(threads):
            runner, _module = lower(quantized, task, runtime, tmp, threads, (1,))
            name = quantized.recipe.name if quantized is not None else "fp32"
            label = f"{task.name} · {name} · {runtime}: batches {start}-{stop - 1}"
            out = run_outputs(runner, task.eval_batches[start:stop], label, task, first=start)
            if hasattr(runner, "close"):
                runner.close()
            return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _score(runner: Any, task: Task, label: str, score_threads: int, threads: int) -> np.ndarray:
    """The test set's outputs, through a second session with ``score_threads`` when the runner has one
    (``threads``: the runner's own)."""
    wide = runner.with_threads(score_threads) if hasattr(runner, "with_threads") and score_threads != threads else None
    try:
        return run_outputs(wide or runner, task.eval_batches, f"{label}: evaluating", task)
    finally:
        if wide is not None:
            wide.close()


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
    outputs: np.ndarray | None = None,
    score_threads: int | None = None,
) -> Record:
    """Quantize (unless ``recipe`` is None: FP32), lower, run and measure; returns the result record.

    With ``out``, the artifacts and ``result.json`` are written there (atomically: a temporary
    folder renamed when complete). ``quantized`` reuses a QuantizedModel already built for ``recipe``;
    ``outputs``: the test set's outputs already computed (``shard_outputs``, concatenated), scored as given.
    ``score_threads``: a runner that can (ONNX Runtime) scores the test set in a second session with
    this many threads; latency, decode and memory are measured with ``threads``.
    """
    if isinstance(recipe, str):
        recipe = None if recipe == "fp32" else get_recipe(recipe)
    get_runtime(runtime)
    check_task(task)
    with torch_threads(threads):
        return _evaluate(
            task,
            recipe,
            runtime,
            out,
            threads,
            batch_sizes,
            measure_memory,
            latency_seconds,
            quantized,
            outputs,
            score_threads or threads,
        )


def _evaluate(
    task: Task,
    recipe: Recipe | None,
    runtime: str,
    out: str | os.PathLike[str] | None,
    threads: int,
    batch_sizes: tuple[int, ...],
    measure_memory: bool,
    latency_seconds: float,
    quantized: QuantizedModel | None,
    given: np.ndarray | None = None,
    score_threads: int = 1,
) -> Record:
    name = recipe.name if recipe else "fp32"
    tmp = Path(tempfile.mkdtemp(prefix="quantwise-"))
    clock = StageClock()
    try:
        qm = quantized if quantized is not None else (build_quantized(task, recipe) if recipe else None)
        clock.lap("quantize")
        runner, module = lower(qm, task, runtime, tmp, threads, batch_sizes)
        clock.lap("lower")
        outputs = (
            given
            if given is not None
            else _score(runner, task, f"{task.name} · {name} · {runtime}", score_threads, threads)
        )
        clock.lap("score")
        record = new_record(task, name, recipe, runtime, qm, runner, task.score(outputs), threads)
        if qm is None and runtime != "torch":
            from quantwise.runtime.torch_sim import check_runtime_fp32

            record["info"]["fp32_max_rel_diff"] = check_runtime_fp32(
                runtime, runner, module, task.eval_batches[0], get_runtime(runtime).fp32_tolerance
            )
        if qm is not None:
            add_parity(record, qm, task, runner, runtime)
        clock.lap("check")
        if task.labels is not None and len(task.labels) == len(outputs):
            # per-example outcomes, so compare can give paired intervals and McNemar's test vs FP32
            correct = np.asarray(task.predict(outputs)) == np.asarray(task.labels)
            record["per_example"] = {"correct": correct.astype(int).tolist()}
        if task.per_example is not None:  # per-example values of mean metrics (cosine, per-window NLL)
            record.setdefault("per_example", {}).update(task.per_example(outputs))
        measure_into(
            record, task, runtime, runner, module, tmp, threads, batch_sizes, measure_memory, latency_seconds, clock
        )
        record["stage_seconds"] = clock.seconds
        if out is not None:
            _publish(tmp, Path(out), record)
        if hasattr(runner, "close"):
            runner.close()
        return record
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure(
    task: Task,
    quantized: QuantizedModel | None,
    runtime: str,
    record: Record,
    threads: int = 1,
    batch_sizes: tuple[int, ...] = (1, 32),
    measure_memory: bool = True,
    latency_seconds: float = 5.0,
) -> Record:
    """The measuring stage alone: lower ``quantized`` (None: FP32) afresh and add latency (and an
    LLM's decode speed) and peak memory to ``record``, which ``evaluate(..., batch_sizes=(),
    measure_memory=False)`` scored. A cluster runs this on the target machine, one at a time."""
    tmp = Path(tempfile.mkdtemp(prefix="quantwise-"))
    try:
        with torch_threads(threads):
            runner, module = lower(quantized, task, runtime, tmp, threads, batch_sizes)
            measure_into(
                record, task, runtime, runner, module, tmp, threads, batch_sizes, measure_memory, latency_seconds
            )
            if hasattr(runner, "close"):
                runner.close()
        return record
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, out: Path, record: Record) -> None:
    import json

    (tmp / "module.pt").unlink(missing_ok=True)
    for f in tmp.glob("*.optimized.onnx"):
        f.unlink()
    (tmp / "result.json").write_text(json.dumps(record, indent=2))
    with atomic_dir(out) as staged:
        shutil.copytree(tmp, staged, dirs_exist_ok=True)
