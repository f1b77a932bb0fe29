"""The recommended format, exported and checked: what is in ``recommended/`` is what was evaluated.

After writing the winner, the folder is read back exactly as ``quantwise-export.json`` tells a
user to (the runtime's ``load``) and run on a sample of the test set; its outputs are compared
with the QuantizedModel lowered afresh in the same runtime. The check and its outcome are
recorded in the metadata; a mismatch fails the export.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from quantwise.api import evaluate, lower
from quantwise.sweep.compare import write_json
from quantwise.tasks.base import Task

SAMPLE = 16  # test examples run through the exported file
TOLERANCE = 1e-5  # relative to the output range: the same file format, read twice, computes the same values


class ExportMismatch(RuntimeError):
    """The exported file's outputs differ from those of the evaluated model."""


def verify_export(task: Task, qm: Any, runtime: str, dest: Path, threads: int = 1) -> dict[str, Any]:
    """Reload ``dest`` as a user would and compare its outputs on the first test examples."""
    from quantwise.runtime.registry import get_runtime

    spec = get_runtime(runtime)
    if spec.load is None:
        return {"ok": True, "checked": False, "detail": f"{runtime} declares no loader: not re-checked"}
    first = task.eval_batches[0]
    n = min(SAMPLE, len(first[0]))
    examples = [tuple(t[i : i + 1] for t in first) for i in range(n)]  # one per call: every runtime takes batch 1
    with tempfile.TemporaryDirectory() as d:
        fresh, _ = lower(qm, task, runtime, Path(d), threads, (1,))
        want = np.concatenate([fresh.run(b) for b in examples])
        if hasattr(fresh, "close"):
            fresh.close()
    loaded = spec.load(dest, task, threads)
    got = np.concatenate([loaded.run(b) for b in examples])
    if hasattr(loaded, "close"):
        loaded.close()
    diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
    bound = TOLERANCE * max(float(np.abs(want).max()), 1e-12)
    ok = diff <= bound
    return {
        "ok": ok,
        "checked": True,
        "examples": n,
        "max_abs_diff": diff,
        "tolerance": f"{TOLERANCE:g} of the output range",
        "identical": diff == 0.0,
        "detail": f"{n} test examples through the reloaded {runtime} artifact, max |difference| {diff:.3g}"
        + ("" if ok else f" > {bound:.3g}"),
    }


def export_recommended(
    task: Task,
    result: dict[str, Any],
    out: Path,
    threads: int = 1,
    max_drop_points: float | None = None,
    built: dict[str, Any] | None = None,
    optimize: str | None = None,
    score_threads: int | None = None,
) -> Path | None:
    """Write the winner with a metadata file to ``out/recommended``; reuses its QuantizedModel from
    ``built`` when compare made it in this process (after ``--resume`` it is rebuilt, deterministically)."""
    from quantwise.sweep.formats import formats_for, trial_task

    w = result["recommendation"]["winner"]
    if not w:
        return None
    from quantwise.api import build_quantized

    fmt = formats_for(task.info.get("kind"))[w["format"]]
    task = trial_task(task, fmt, w["runtime"])
    dest = out / "recommended"
    recipe = fmt.build_recipe(max_drop_points, optimize)
    qm = (built or {}).get(fmt.id) or (build_quantized(task, recipe) if recipe else None)
    evaluate(
        task,
        recipe,
        w["runtime"],
        out=dest,
        threads=threads,
        score_threads=score_threads,
        batch_sizes=(1,),
        measure_memory=False,
        latency_seconds=0.5,
        quantized=qm,
    )
    from quantwise.runtime.registry import get_runtime

    artifact, how = get_runtime(w["runtime"]).how_to_load(qm)
    extra = {}
    if w["runtime"] == "integer" and qm is not None:
        from quantwise.fixedpoint.cexport import export_c, plan_memory

        export_c(qm, dest / "c")
        extra["c_memory"] = plan_memory(qm.plan).to_dict()
    verified = verify_export(task, qm, w["runtime"], dest, threads)
    meta = {
        **extra,
        "verified": verified,
        "format": fmt.id,
        "runtime": w["runtime"],
        "recipe": recipe.to_dict() if recipe else None,
        "task": task.name,
        "artifact": artifact,
        "how_to_load": how,
        "inputs": task.input_names,
        "accuracy_drop_points": w["drop_points"],
        "made_by": "quantwise compare",
        "created": result["created"],
    }
    write_json(dest / "quantwise-export.json", meta)
    if not verified["ok"]:
        raise ExportMismatch(
            f"the exported {artifact} in {dest} does not compute what was evaluated: {verified['detail']}"
        )
    return dest
