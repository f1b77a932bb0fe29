"""compare's trials on a Ray cluster (``--executor ray``): build and score fan out, measuring is exclusive.

Each (format, runtime) trial runs as Ray tasks of their own resource shape:

- **build and score** (``num_cpus=threads``): quantize (calibrate, train), lower, run the test set,
  keep per-example outcomes. These run side by side on any worker. With more than one shard
  (``--shards``, default one per node of the cluster) this is three stages: **build** the
  QuantizedModel; **shards**, each lowering it afresh and running a contiguous range of the test
  set's batches on any worker; **score** the outputs concatenated in order, exactly as one run
  over the whole test set would (per-example outcomes, intervals and metrics are the same).
- **measure** (``num_cpus=threads`` plus one unit of the measuring label, default
  ``quantwise-measure``): lower the same QuantizedModel afresh and time it (latency, an LLM's
  decode) and measure peak memory. A node offers one unit of its label, so at most one measurement
  runs on a node at a time, and only on nodes that carry the label (the target hardware).

The QuantizedModel goes from the first task to the second through Ray's object store. Records come
back to the driver, which seals and writes them to ``records/`` exactly as the in-process executor
does, so ``--resume``, the report and the recommendation do not know where a trial ran. A worker
that dies mid-task is retried (``max_retries``) and its half-finished work discarded; an exception
inside a trial is a failed record, never retried.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantwise.errors import UserError
from quantwise.records import Record

if TYPE_CHECKING:
    from quantwise.sweep.compare import CompareSettings
    from quantwise.sweep.formats import Format
    from quantwise.tasks.base import Task

MEASURE_LABEL = "quantwise-measure"
RETRIES = 2  # a worker that dies (killed, out of memory) is retried this many times


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'quantwise[ray]'") from None
    return ray


def connect(address: str | None, label: str) -> dict[str, float]:
    """Start a local Ray (every core, one measuring unit) or join the cluster at ``address``;
    check some node carries ``label``. Returns the cluster's resources. One line, exit 2, on failure."""
    ray = _ray()
    if address:
        _reachable(address)
    if not ray.is_initialized():
        try:
            if address:
                ray.init(address=address, log_to_driver=False, logging_level="ERROR")
            else:
                ray.init(
                    num_cpus=os.cpu_count() or 1,
                    resources={label: 1},
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level="ERROR",
                )
        except Exception as e:  # ConnectionError, TimeoutError, RuntimeError ... all mean "not reachable"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(
                f"cannot reach a Ray cluster at {address}: {first[:200]}; check the address "
                "(`ray status` on the head node) or drop --address for a local Ray"
            ) from None
    resources = dict(ray.cluster_resources())
    if resources.get(label, 0) < 1:
        raise UserError(
            f"no node of the Ray cluster carries the measuring label {label!r}: start the target machine's "
            f"node with `ray start --resources '{{\"{label}\": 1}}'`, or name a label it has with --measure-on"
        )
    return resources


def _reachable(address: str) -> None:
    """A TCP connection to ``host:port`` within 5 s, so an unreachable address is one line now
    instead of Ray retrying for minutes."""
    import socket

    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address!r} is not host:port (e.g. 10.0.0.5:6379, or ray://10.0.0.5:10001)")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise UserError(
            f"cannot reach a Ray cluster at {address}: {e.strerror or e}; check the address (`ray status` on "
            "the head node) or drop --address for a local Ray"
        ) from None


def node() -> dict[str, Any]:
    """Where this code runs: host name and CPU (the record says which machine measured it)."""
    from quantwise.measure.env import environment

    env = environment(1)
    return {"host": platform.node(), "cpu": env.get("cpu"), "flags": env.get("cpu_flags")}


def build_and_score(task: Task, fmt: Format, runtime: str, settings: CompareSettings) -> tuple[Record, Any]:
    """Stage 1 on any worker: the record without timing, and the QuantizedModel for stage 2."""
    import time

    from quantwise.sweep.compare import run_trial

    built: dict[str, Any] = {}
    t0 = time.perf_counter()
    rec = run_trial(task, fmt, runtime, settings, built, measure=False)
    qm = built.get(fmt.id)
    rec["built_on"] = node()
    rec["stage_seconds"] = {"build_and_score": round(time.perf_counter() - t0, 3)}
    return rec, (None if isinstance(qm, Exception) else qm)


def build_stage(task: Task, fmt: Format, runtime: str, settings: CompareSettings) -> tuple[dict[str, Any], Any]:
    """Sharded trials, stage 1: ``({"status": "built", where, seconds}, the QuantizedModel (None for
    FP32))``, or the record of why it could not be built and None."""
    import time

    from quantwise.sweep.compare import build_format, failure_record

    built: dict[str, Any] = {}
    t0 = time.perf_counter()
    try:
        build_format(task, fmt, settings, built)
    except Exception as e:
        return dict(failure_record(task, fmt, runtime, e)), None
    return {"status": "built", "built_on": node(), "seconds": round(time.perf_counter() - t0, 3)}, built.get(fmt.id)


def shard_stage(task: Task, qm: Any, runtime: str, settings: CompareSettings, start: int, stop: int) -> Any:
    """Sharded trials, stage 2 on any worker: the outputs on evaluation batches ``start:stop``."""
    import time
    import traceback

    from quantwise.api import shard_outputs
    from quantwise.errors import error_line

    t0 = time.perf_counter()
    try:
        out = shard_outputs(task, qm, runtime, start, stop, settings.threads)
    except Exception as e:
        return {"error": error_line(e), "traceback": traceback.format_exc(limit=5)}
    return {"outputs": out, "batches": [start, stop], "on": node(), "seconds": round(time.perf_counter() - t0, 3)}


def score_stage(
    task: Task, fmt: Format, runtime: str, settings: CompareSettings, qm: Any, built: dict[str, Any], *shards: Any
) -> Record:
    """Sharded trials, stage 3: score the shards' outputs, concatenated in order, as one test set."""
    import time

    import numpy as np

    from quantwise.sweep.compare import not_run, run_trial

    failed = next((sh for sh in shards if "error" in sh), None)
    if failed is not None:
        return not_run(task, fmt, runtime, "failed", f"evaluating: {failed['error']}", failed["traceback"])
    t0 = time.perf_counter()
    outputs = np.concatenate([sh["outputs"] for sh in shards])
    rec = run_trial(task, fmt, runtime, settings, {fmt.id: qm} if qm is not None else {}, False, outputs)
    rec["built_on"] = built["built_on"]
    rec["eval_shards"] = [{"batches": sh["batches"], "on": sh["on"]} for sh in shards]
    rec["stage_seconds"] = {
        "build": built["seconds"],
        "shards": [sh["seconds"] for sh in shards],
        "score": round(time.perf_counter() - t0, 3),
    }
    return rec


def shard_bounds(n_batches: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous, near-equal ranges of batch indices (fewer when there are fewer batches)."""
    k = max(1, min(shards, n_batches))
    edges = [round(i * n_batches / k) for i in range(k + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:], strict=False) if b > a]


def measure_stage(task: Task, qm: Any, runtime: str, rec: Record, settings: CompareSettings) -> Record:
    """Stage 2 on a labelled node, one at a time per node: latency, decode speed, peak memory."""
    import time
    import traceback

    from quantwise.api import measure
    from quantwise.sweep.compare import batch_sizes

    t0 = time.perf_counter()
    try:
        measure(
            task,
            qm,
            runtime,
            rec,
            threads=settings.threads,
            batch_sizes=batch_sizes(task, settings),
            measure_memory=settings.measure_memory,
            latency_seconds=settings.latency_seconds,
        )
    except Exception as e:  # a trial that fails is recorded once, not retried
        from quantwise.errors import error_line

        rec["status"] = "failed"
        rec["error"] = f"measuring: {error_line(e)}"
        rec["traceback"] = traceback.format_exc(limit=5)
    rec["measured_on"] = node()
    rec.setdefault("stage_seconds", {})["measure"] = round(time.perf_counter() - t0, 3)
    return rec


def run_on_ray(
    task: Task, todo: list[tuple[Format, str, Path]], settings: CompareSettings
) -> Iterator[tuple[Format, str, Path, Record]]:
    """Submit every trial; yield ``(format, runtime, record path, record)`` as each finishes."""
    ray = _ray()
    label = settings.measure_on or MEASURE_LABEL
    connect(settings.address, label)
    cpus = max(1, settings.threads)
    opts = dict(num_cpus=cpus, max_retries=RETRIES, retry_exceptions=False)
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    bounds = shard_bounds(len(task.eval_batches), settings.shards or nodes)
    sharded = len(bounds) > 1
    first = ray.remote(num_returns=2, **opts)(build_stage if sharded else build_and_score)
    shard, score = ray.remote(**opts)(shard_stage), ray.remote(**opts)(score_stage)
    meas = ray.remote(resources={label: 1}, **opts)(measure_stage)
    task_ref = ray.put(task)
    pending: dict[Any, tuple[str, Format, str, Path, Any]] = {}
    for fmt, runtime, path in todo:
        rec_ref, qm_ref = first.remote(task_ref, fmt, runtime, settings)
        pending[rec_ref] = ("build", fmt, runtime, path, qm_ref)
    while pending:
        (done,), _ = ray.wait(list(pending), num_returns=1)
        stage, fmt, runtime, path, qm_ref = pending.pop(done)
        try:
            rec = ray.get(done)
        except ray.exceptions.RayTaskError as e:  # raised inside the trial: the user's error is the user's
            if isinstance(e.cause, UserError):
                raise UserError(str(e.cause)) from None
            yield fmt, runtime, path, _lost(task, fmt, runtime, stage, e)
            continue
        except ray.exceptions.RayError as e:  # the worker died more often than it is retried
            yield fmt, runtime, path, _lost(task, fmt, runtime, stage, e)
            continue
        if stage == "build" and rec.get("status") == "built":  # fan the test set out, then score it
            parts = [shard.remote(task_ref, qm_ref, runtime, settings, a, b) for a, b in bounds]
            ref = score.remote(task_ref, fmt, runtime, settings, qm_ref, rec, *parts)
            pending[ref] = ("score", fmt, runtime, path, qm_ref)
        elif stage in ("build", "score") and rec.get("status") == "ok":
            pending[meas.remote(task_ref, qm_ref, runtime, rec, settings)] = ("measure", fmt, runtime, path, None)
        else:
            yield fmt, runtime, path, rec


def _lost(task: Task, fmt: Format, runtime: str, stage: str, e: Exception) -> Record:
    from quantwise.errors import error_line
    from quantwise.sweep.compare import not_run

    why = f"the Ray worker running its {stage} stage died {RETRIES + 1} times: {error_line(e)[:240]}"
    return not_run(task, fmt, runtime, "failed", why)
