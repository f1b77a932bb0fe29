"""One result record: its fields from a lowered runner, and the measurements added to it (latency,
an LLM's decode speed, peak memory in a separate process, the runtime against the simulation)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantwise.measure.decode import measure_decode
from quantwise.measure.env import environment
from quantwise.measure.latency import StageClock, measure_latency
from quantwise.measure.memory import peak_memory
from quantwise.progress import status
from quantwise.quantized import QuantizedModel, artifact_size
from quantwise.recipes import Recipe
from quantwise.records import Record
from quantwise.runtime.registry import RUNTIMES
from quantwise.tasks.base import Task

RESULT_SCHEMA = "quantwise.result/1"


def measure_into(
    record: Record,
    task: Task,
    runtime: str,
    runner: Any,
    module: nn.Module,
    tmp: Path,
    threads: int,
    batch_sizes: tuple[int, ...],
    measure_memory: bool,
    latency_seconds: float,
    clock: StageClock | None = None,
) -> None:
    clock = clock or StageClock()
    if batch_sizes:
        status("measuring latency")
    for bs in batch_sizes:
        batch = task.latency_input(bs)
        record["latency_ms"][f"batch_{bs}"] = measure_latency(
            partial(runner.run, batch), min_seconds=min(0.25, latency_seconds), max_seconds=latency_seconds
        )
    clock.lap("latency")
    if task.generation is not None and batch_sizes:
        status("measuring decode speed")
        record["decode"] = measure_decode(runner, task.generation)
        if "per_token_ms" in record["decode"]:
            record["latency_ms"]["decode_token"] = record["decode"].pop("per_token_ms")
        clock.lap("decode")
    if measure_memory:
        status("measuring peak memory in a separate process")
        record["peak_memory_bytes"] = peak_memory_of(runtime, runner, module, task, tmp, threads)
        record["samples"]["peak_memory_bytes"] = 1 if record["peak_memory_bytes"] is not None else 0
        clock.lap("memory")


def add_parity(record: Record, qm: QuantizedModel, task: Task, runner: Any, runtime: str) -> None:
    from quantwise.errors import error_line
    from quantwise.runtime.parity import runtime_vs_simulation

    try:
        found = runtime_vs_simulation(qm, task, runner, runtime)
    except Exception as e:  # the check must not cost the format its record: it says why it did not run
        found = {"status": "n/a", "reason": f"not compared: {error_line(e)[:200]}"}
    if found is not None:
        record["info"]["runtime_vs_simulation"] = found


def new_record(
    task: Task,
    name: str,
    recipe: Recipe | None,
    runtime: str,
    qm: QuantizedModel | None,
    runner: Any,
    metrics: dict[str, Any],
    threads: int,
) -> Record:
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
        # single measurements say so (latency carries its own n and interval; metrics their examples)
        "samples": {"peak_memory_bytes": 0, "time_to_quantize_s": 1 if qm else 0},
        "time_to_quantize_s": qm.info.get("time_to_quantize_s", 0.0) if qm else 0.0,
        "integer_ops": runner.integer_ops(),
        "fixed_point": runner.report() if getattr(runner, "runtime", "") == "integer" else None,
        "tflite": runner.report(qm) if getattr(runner, "runtime", "") == "tflite" else None,
        "gguf": getattr(runner, "gguf", None),
        "quantized_layers": sorted(qm.layers) if qm else [],
        "float_layers": qm.skipped if qm else {},
        "info": {
            **({"imported": task.info["imported"]} if "imported" in task.info else {}),  # a graph's PyTorch import
            **{k: v for k, v in (qm.info.items() if qm else []) if k != "time_to_quantize_s"},
            **({"attention": runner.attention} if getattr(runner, "attention", "") else {}),  # an LLM's step graph
        },
        "env": environment(threads),
    }


def peak_memory_of(runtime: str, runner: Any, module: nn.Module, task: Task, tmp: Path, threads: int) -> int | None:
    if RUNTIMES[runtime].memory_loads_artifact:
        artifact = runner.artifact
    else:
        artifact = tmp / "module.pt"
        torch.save(module, artifact)
    return peak_memory(runtime, artifact, task.latency_input(1), task.input_names, threads)
