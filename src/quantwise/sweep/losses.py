"""Where the formats over the accuracy budget lost it: ``explain`` run inside ``compare``.

For the format with the largest drop (``--explain worst``, the default), or every format over
the budget (``all``), compare measures each layer's sensitivity in the PyTorch simulation of the
recipe on the first ``--explain-samples`` evaluation examples, and the measured causes and
suggested fixes for the worst layers. Explanations are saved with the records, so ``--resume``
does not measure them again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from quantwise.progress import status, warn
from quantwise.recipes import DynamicInt8Recipe, StaticInt8Recipe, WeightOnlyRecipe
from quantwise.records import Record
from quantwise.sweep.formats import formats_for
from quantwise.tasks.base import Task

EXPLAIN_MODES = ("worst", "all", "none")
EXPLAINABLE = (StaticInt8Recipe, DynamicInt8Recipe, WeightOnlyRecipe)  # post-training, one layer at a time
KEEP_LAYERS = 8


def explain_command(task_name: str, fmt_id: str, kind: str | None = None) -> str:
    """The ``quantwise explain`` command for a format (recipe keys without a flag go in a recipe file)."""
    fmt = formats_for(kind)[fmt_id]
    flags = "".join(f" --{k.replace('_', '-')} {v}" for k, v in fmt.overrides.items() if not isinstance(v, bool))
    rest = {k: v for k, v in fmt.overrides.items() if isinstance(v, bool)}
    extra = f" (with {', '.join(f'{k}: {str(v).lower()}' for k, v in rest.items())} in a --recipe-file)" if rest else ""
    return f"quantwise explain --task {task_name} --recipe {fmt.recipe}{flags}{extra}"


def over_budget(records: list[Record], recommendation: dict[str, Any]) -> dict[str, float]:
    """Format id -> its largest drop in points over its runtimes, for formats over the budget; worst first."""
    from quantwise.tasks.base import MetricSpec

    base, allowed = recommendation["baseline_score"], recommendation["budget_points"]
    metric = recommendation["metric"]
    spec = MetricSpec(
        metric, recommendation.get("higher_is_better", True), recommendation.get("metric_unit", "points") == "points"
    )
    drops: dict[str, float] = {}
    for r in records:
        if r.get("status") != "ok" or r["format"] == "fp32":
            continue
        d = spec.worse_by(base, r["metrics"][metric])
        if d > allowed + 1e-9:
            drops[r["format"]] = max(d, drops.get(r["format"], d))
    return dict(sorted(drops.items(), key=lambda kv: -kv[1]))


def explain_losses(
    task: Task,
    records: list[Record],
    recommendation: dict[str, Any],
    mode: str,
    samples: int,
    records_dir: Path,
    resume: bool,
    built: dict[str, Any],
) -> dict[str, Any]:
    """``{"explained": {format: explanation}, "not_explained": {format: why}}`` for the formats over budget."""
    drops = over_budget(records, recommendation)
    explained: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for fmt_id, drop in drops.items():
        recipe = formats_for(task.info.get("kind"))[fmt_id].build_recipe()
        if mode == "none":
            skipped[fmt_id] = "--explain none"
        elif not isinstance(recipe, EXPLAINABLE):
            skipped[fmt_id] = "explain covers the post-training static, dynamic and weight-only formats"
        elif mode == "worst" and explained:
            skipped[fmt_id] = (
                f"--explain worst explains only the largest drop; run {explain_command(task.name, fmt_id, task.info.get('kind'))}"
            )
        else:
            got = _explain_one(task, fmt_id, recipe, drop, samples, records_dir, resume, built)
            if isinstance(got, str):
                skipped[fmt_id] = got
            else:
                explained[fmt_id] = got
    return {"explained": explained, "not_explained": skipped}


def _explain_one(
    task: Task,
    fmt_id: str,
    recipe: Any,
    drop: float,
    samples: int,
    records_dir: Path,
    resume: bool,
    built: dict[str, Any],
) -> dict[str, Any] | str:
    """The explanation, saved with the records; or why it could not be made."""
    from quantwise.explain.run import explain
    from quantwise.sweep.compare import write_json

    path = records_dir / f"explain__{fmt_id}.json"
    if resume and path.exists():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(saved, dict) and {"format", "layers", "summary"} <= set(saved) and saved["format"] == fmt_id:
                return saved
        except (ValueError, UnicodeDecodeError):
            pass
        warn(f"--resume: {path} is not a valid explanation; explaining {fmt_id} again")
    status(f"explain: where {fmt_id} lost {drop:.2f} points")
    try:
        qm = built.get(fmt_id)
        full = explain(task, recipe, samples=samples, top=3, qm=qm if hasattr(qm, "layers") else None)
    except Exception as e:
        why = f"explain failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        warn(f"{fmt_id}: {why}")
        return why
    out = {
        "format": fmt_id,
        "drop_points": drop,
        "recipe": full["recipe"],
        "summary": full["summary"],
        "evaluations": full["evaluations"],
        "layers": full["layers"][:KEEP_LAYERS],
        "command": explain_command(task.name, fmt_id, task.info.get("kind")),
    }
    write_json(path, out)
    return out
