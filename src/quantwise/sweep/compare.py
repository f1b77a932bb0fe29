"""``compare``: every format in every runtime, saved as each finishes, resumable, then a recommendation.

The winner's export and its re-verification live in :mod:`quantwise.sweep.export`."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantwise.api import evaluate
from quantwise.errors import UnsupportedModel, UserError, error_line
from quantwise.measure.env import environment, native_bf16
from quantwise.outdir import clear_previous_run
from quantwise.progress import live_progress, warn
from quantwise.recipes import Recipe
from quantwise.records import Record
from quantwise.sweep.derive import derive, prefill_note, runtime_agreement, sample_size_note
from quantwise.sweep.formats import Format, select_formats, trial_task
from quantwise.sweep.identity import run_identity, seal, why_stale
from quantwise.sweep.losses import explain_losses
from quantwise.sweep.profiles import get_profile
from quantwise.sweep.recommend import Budget, recommend
from quantwise.tasks.base import Task

COMPARE_SCHEMA = "quantwise.compare/1"
PREVIOUS_RUN = ("results.json", "report.html", "recommended", "records", "run.json")  # what a compare writes


@dataclass
class CompareSettings:
    formats: str | None = None
    runtimes: str | None = None
    max_drop: Budget = Budget(1.0, False)
    optimize: str = "latency"
    target: str = "this-machine"
    threads: int = 1
    score_threads: int | None = None  # ONNX Runtime scoring's threads (None: ``threads``); timings keep ``threads``
    measure_memory: bool = True
    latency_batch: int = 1
    batch_n: int = 32
    latency_seconds: float = 3.0
    train: bool = True
    explain: str = "worst"
    explain_samples: int = 128
    executor: str = "in-process"  # or "ray": trials on a Ray cluster (sweep/ray_executor.py)
    address: str | None = None  # an existing Ray cluster; None starts a local one
    measure_on: str = "quantwise-measure"  # the Ray resource marking nodes that may measure
    shards: int = 0  # Ray: split each trial's test set across this many workers (0: one per node)

    def result_settings(self) -> dict[str, Any]:
        """The settings that change a record's content (the resume identity hashes them)."""
        return {
            "formats": self.formats,
            "runtimes": self.runtimes,
            "max_drop": str(self.max_drop),
            "optimize": self.optimize,
            "threads": self.threads,
            "latency_batch": self.latency_batch,
            "batch_n": self.batch_n,
            "measure_memory": self.measure_memory,
            "latency_seconds": self.latency_seconds,
            "train": self.train,
        }

    def to_dict(self) -> dict[str, Any]:
        """Every setting, as ``results.json`` records them: those that change a record, and the
        ones that only choose and explain (target, explanation)."""
        return {
            **self.result_settings(),
            "target": self.target,
            "score_threads": self.score_threads,
            "explain": self.explain,
            "explain_samples": self.explain_samples,
            "executor": self.executor,
            "shards": self.shards,
            "address": self.address,
            "measure_on": self.measure_on,
        }


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def run_compare(
    task: Task, settings: CompareSettings, out: Path, resume: bool = False, built: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Run the sweep; every finished entry is saved to ``out/records/`` before the next starts.

    ``built`` (format id -> QuantizedModel) is filled as formats are quantized, so a caller can
    export the winner without quantizing it again.
    """
    profile = get_profile(settings.target)
    pairs = select_formats(settings.formats, settings.runtimes, task.info.get("kind"))
    skipped = skipped_formats(pairs, settings, task)
    pairs = [(f, r) for f, r in pairs if f.id not in skipped]
    records_dir = out / "records"
    run_file = out / "run.json"
    run_id = run_identity(task, settings.result_settings())
    if resume and run_file.exists():
        try:
            prev = json.loads(run_file.read_text(encoding="utf-8"))
            prev_id = prev.get("run_id") if isinstance(prev, dict) else None
        except (ValueError, UnicodeDecodeError):
            prev_id = None
            warn(f"--resume: {run_file} is corrupt; every format is recomputed")
        if prev_id != run_id:
            if prev_id is not None:
                warn(f"--resume: {out} holds a run of a different model, data or settings; every format is recomputed")
            clear_previous_run(out, PREVIOUS_RUN)
    else:  # a fresh run: the earlier run's files go (check_out refused unless --overwrite), never half
        clear_previous_run(out, PREVIOUS_RUN)
    records_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_file, {"run_id": run_id, "task": task.name, "settings": settings.to_dict()})
    records: list[Record] = []
    built = {} if built is None else built  # one QuantizedModel per format, shared by its runtimes
    left = {f.id: sum(1 for g, _ in pairs if g.id == f.id) for f, _ in pairs}  # runtimes still to run
    with live_progress() as progress:
        overall = progress.add_task("compare: all formats", total=len(pairs))
        todo = []
        for fmt, runtime in pairs:
            path = records_dir / f"{fmt.id}__{runtime}.json"
            if resume and path.exists():
                saved, why = _read_record(path, run_id, fmt.id, runtime)
                if why is None and saved is not None:
                    records.append(saved)
                    progress.advance(overall)
                    continue
                warn(f"--resume: recomputing {fmt.id} · {runtime}: {path} {why}")
            todo.append((fmt, runtime, path))
        if settings.executor == "ray":
            from quantwise.sweep.ray_executor import run_on_ray

            progress.update(overall, description=f"compare on Ray: {len(todo)} trials")
            for done_fmt, done_runtime, path, rec in run_on_ray(task, todo, settings):
                rec = seal(rec, run_id)
                write_json(path, rec)
                records.append(rec)
                progress.update(overall, description=f"compare on Ray: {done_fmt.id} · {done_runtime} done")
                progress.advance(overall)
            todo = []  # every trial ran on the cluster
        for fmt, runtime, path in todo:
            progress.update(overall, description=f"compare: {fmt.id} · {runtime}")
            rec = seal(_run_one(task, fmt, runtime, settings, built), run_id)
            write_json(path, rec)
            records.append(rec)
            progress.advance(overall)
            left[fmt.id] -= 1
            if not left[fmt.id] and fmt.id in built and not within_budget(records, fmt.id, task, settings.max_drop):
                del built[fmt.id]  # no export will need it (explain rebuilds): an LLM's copies add up
    order = {(f.id, r): i for i, (f, r) in enumerate(pairs)}
    records.sort(key=lambda r: order.get((r.get("format", ""), r.get("runtime", "")), len(order)))
    derive(records, task.metrics, task.primary_metric)
    speed = speed_keys(task, settings)
    rec_result = recommend(
        records,
        settings.max_drop,
        "latency" if settings.optimize == "prefill" else settings.optimize,
        profile,
        task.metric_spec(),
        speed[0],
        speed_batches=speed,
        portability={f.id: len(f.runtimes) for f, _ in pairs},
    )
    notes = [sample_size_note(records, rec_result["budget_points"], rec_result.get("metric_unit", "points"))]
    if is_lm(task) and speed == ["decode_token"] and rec_result["winner"]:
        notes.append(prefill_note(records, rec_result["winner"]["key"]))
    rec_result["notes"] += [n for n in notes if n]
    losses = explain_losses(
        task, records, rec_result, settings.explain, settings.explain_samples, records_dir, resume, built
    )
    return {
        "schema": COMPARE_SCHEMA,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "task": task.name,
        "settings": settings.to_dict(),
        "records": records,
        "recommendation": rec_result,
        "losses": losses,
        "runtime_agreement": runtime_agreement(records),
        "skipped_formats": skipped,
        "env": environment(settings.threads),
    }


def skipped_formats(pairs: list[tuple[Format, str]], settings: CompareSettings, task: Task) -> dict[str, str]:
    """Formats selected but not run, each with why: QAT without training data (or ``--no-train``);
    and in the default set (no ``--formats``), bf16 on a CPU without bf16 instructions, which
    PyTorch emulates (8x slower than FP32 in a Linear on an AVX2 CPU): not a format to deploy
    there, and on an LLM the slowest step of the run. Named in ``--formats``, it runs."""
    out: dict[str, str] = {}
    for f, _ in pairs:
        if f.trains and not (settings.train and task.train_batches):
            out[f.id] = "--no-train" if not settings.train else "the task has no training data"
        elif f.family == "bf16" and not settings.formats and native_bf16() is False:
            out[f.id] = (
                "this CPU has no bf16 instructions (PyTorch emulates them, slower than FP32): --formats bf16 runs it"
            )
    return out


def within_budget(records: list[Record], fmt_id: str, task: Task, budget: Budget) -> bool:
    """Whether any finished record of ``fmt_id`` is within ``budget`` of the best FP32 record so far
    (True when there is no FP32 record yet: nothing can be ruled out)."""
    spec = task.metric_spec()
    base = [r["metrics"][spec.name] for r in records if r["format"] == "fp32" and r.get("status") == "ok"]
    if not base:
        return True
    best = max(base) if spec.higher_is_better else min(base)
    allowed = budget.allowed(best, spec)
    return any(
        r["format"] == fmt_id and r.get("status") == "ok" and spec.worse_by(best, r["metrics"][spec.name]) <= allowed
        for r in records
    )


def is_lm(task: Task) -> bool:
    return task.info.get("kind") == "causal-lm"


def speed_keys(task: Task, s: CompareSettings) -> list[str]:
    """The latency entries a speed win must show: for an LLM, decode time per token (``--optimize
    latency``) or the prompt's prefill (``--optimize prefill``); else every batch size measured."""
    if is_lm(task):
        return [f"batch_{s.latency_batch}"] if s.optimize == "prefill" else ["decode_token"]
    return [f"batch_{s.latency_batch}", f"batch_{s.batch_n}"]


def batch_sizes(task: Task, s: CompareSettings) -> tuple[int, ...]:
    """Batch sizes to time: an LLM's prefill at batch 1 only (its prompt is a whole window)."""
    return (s.latency_batch,) if is_lm(task) else (s.latency_batch, s.batch_n)


def _read_record(path: Path, run_id: str, fmt: str, runtime: str) -> tuple[Record | None, str | None]:
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, OSError) as e:
        return None, f"cannot be read ({type(e).__name__})"
    return rec, why_stale(rec, run_id, fmt, runtime)


def build_format(task: Task, fmt: Format, s: CompareSettings, built: dict[str, Any]) -> Recipe | None:
    """The format's recipe, with its QuantizedModel built into ``built[fmt.id]`` unless already
    there (FP32: None). A model the recipe cannot take raises ``UnsupportedModel`` (remembered, so
    every runtime of the format gets the same answer)."""
    from quantwise.api import build_quantized

    drop = s.max_drop.points(1.0)
    if fmt.recipe == "mixed" and task.info.get("kind") == "causal-lm" and not s.max_drop.relative:
        from quantwise.pipeline.mixed import window_perplexity

        # an LLM's mixed search budgets a rise of validation perplexity in percent: a budget in
        # perplexity units becomes that percent of FP32's validation perplexity
        drop = 100.0 * s.max_drop.value / window_perplexity(task.model, task.validation)
    recipe = fmt.build_recipe(drop, s.optimize)
    if recipe is not None and fmt.id not in built:
        try:
            built[fmt.id] = build_quantized(task, recipe)
        except UnsupportedModel as e:
            built[fmt.id] = e
    if isinstance(built.get(fmt.id), UnsupportedModel):
        raise built[fmt.id]
    return recipe


def failure_record(task: Task, fmt: Format, runtime: str, e: Exception) -> Record:
    """What a trial that raised ``e`` records: unsupported, or failed with its error; a user's
    mistake (``UserError``) is raised, as it stops the whole run."""
    if isinstance(e, UnsupportedModel):
        return not_run(task, fmt, runtime, "unsupported", str(e))
    if isinstance(e, UserError):
        raise e
    return not_run(task, fmt, runtime, "failed", error_line(e), traceback.format_exc(limit=5))


def _run_one(
    task: Task,
    fmt: Format,
    runtime: str,
    s: CompareSettings,
    built: dict[str, Any] | None = None,
    measure: bool = True,
    outputs: Any = None,
) -> Record:
    """One trial: build (or reuse) the format's QuantizedModel, run it in ``runtime`` and score it;
    ``measure=False`` leaves timing and memory to a separate stage (``api.measure``); ``outputs``:
    the test set's outputs already computed in shards (``api.shard_outputs``)."""
    built = {} if built is None else built
    try:
        task = trial_task(task, fmt, runtime)
        fresh, t0 = fmt.id not in built, time.perf_counter()
        recipe = build_format(task, fmt, s, built)
        build_seconds = round(time.perf_counter() - t0, 3) if fresh and recipe is not None else 0.0
        rec = evaluate(
            task,
            recipe,
            runtime,
            threads=s.threads,
            score_threads=s.score_threads,
            batch_sizes=batch_sizes(task, s) if measure else (),
            measure_memory=s.measure_memory and measure,
            latency_seconds=s.latency_seconds,
            quantized=built.get(fmt.id),
            outputs=outputs,
        )
        rec.pop("env", None)
        if "stage_seconds" in rec:  # the build happened before evaluate: counted in the format's first trial
            rec["stage_seconds"]["quantize"] = build_seconds
    except Exception as e:  # one failing format must not stop the others; it is recorded with its error
        return failure_record(task, fmt, runtime, e)
    rec["format"] = fmt.id
    rec["family"] = fmt.family
    return rec


def not_run(task: Task, fmt: Format, runtime: str, status: str, error: str, trace: str | None = None) -> Record:
    """The record of a trial that produced no measurements: ``unsupported`` or ``failed``, and why."""
    rec = Record(
        schema="quantwise.result/1",
        task=task.name,
        recipe=fmt.recipe or "fp32",
        runtime=runtime,
        status=status,
        error=error,
        format=fmt.id,
        family=fmt.family,
    )
    if trace is not None:
        rec["traceback"] = trace
    return rec


run_trial = _run_one  # the executors' name for one trial (tests patch _run_one in-process)
