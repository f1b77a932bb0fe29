"""What compare adds to each record against FP32: metric changes with their intervals and
McNemar's test, speedups with intervals, compression; and whether the test set is big enough."""

from __future__ import annotations

from typing import Any

import numpy as np

from quantwise.measure.stats import (
    LEVEL,
    RESAMPLES,
    SEED,
    examples_needed,
    mcnemar_exact,
    paired_bootstrap,
    ratio_interval,
)
from quantwise.records import Record
from quantwise.runtime.registry import baseline_runtime
from quantwise.sweep.confidence import per_example_key
from quantwise.tasks.base import CLASSIFICATION_METRICS, MetricSpec


def derive(
    records: list[Record], metrics: tuple[MetricSpec, ...] = CLASSIFICATION_METRICS, primary: str = "accuracy"
) -> None:
    """Add to each record, vs FP32 in its baseline runtime: ``metric_change`` (points for fractions,
    else the metric's units; positive is an increase), ``uncertainty`` (paired bootstrap interval
    of the primary metric's change (accuracy: with McNemar's exact test) when both carry its
    per-example values, and ``worse_ci``: how much worse, in its direction), ``speedup`` with
    ``speedup_ci`` (from the medians' intervals) and ``compression``."""
    base = {r["runtime"]: r for r in records if r["format"] == "fp32" and r.get("status") == "ok"}
    for r in records:
        b = base.get(baseline_runtime(r["runtime"]))
        if r.get("status") != "ok" or b is None:
            continue
        r["metric_change"] = {
            m.name: (100 if m.fraction else 1) * (r["metrics"][m.name] - b["metrics"][m.name])
            for m in metrics
            if m.name in r["metrics"] and m.name in b["metrics"]
        }
        if "accuracy" in r["metric_change"]:
            r["accuracy_change_points"] = r["metric_change"]["accuracy"]
        unc = uncertainty(r, b, metrics, primary)
        if unc is not None:
            r["uncertainty"] = unc
        lat, blat = r["latency_ms"], b["latency_ms"]
        r["speedup"] = {k: blat[k]["p50"] / v["p50"] for k, v in lat.items() if k in blat and v["p50"] > 0}
        r["speedup_ci"] = {
            k: ratio_interval(blat[k]["ci95"], v["ci95"])
            for k, v in lat.items()
            if k in blat and "ci95" in v and "ci95" in blat[k]
        }
        r["compression"] = b["size_bytes"] / r["size_bytes"] if r["size_bytes"] else None


def uncertainty(r: Record, b: Record, metrics: tuple[MetricSpec, ...], primary: str) -> dict[str, Any] | None:
    """The paired-bootstrap interval of the primary metric's change against FP32 (display units:
    points for fractions), from the per-example values both records carry; None without them."""
    spec = next((m for m in metrics if m.name == primary), MetricSpec(primary))
    key = per_example_key(spec) or ""
    ours, theirs = (r.get("per_example") or {}).get(key), (b.get("per_example") or {}).get(key)
    if not key or ours is None or theirs is None or len(ours) != len(theirs) or len(ours) == 0:
        return None
    boot = paired_bootstrap(np.array(theirs), np.array(ours), from_mean=spec.from_mean)
    scale = 100 if spec.fraction else 1
    change = [scale * boot["ci"][0], scale * boot["ci"][1]]
    worse = [-change[1], -change[0]] if spec.higher_is_better else change
    out: dict[str, Any] = {
        "metric": primary,
        "change_points": scale * boot["delta"],
        "change_ci": change,
        "worse_ci": worse,
        "method": f"paired bootstrap over {boot['n']} examples ({key}), {RESAMPLES} resamples, seed {SEED}, {LEVEL:.0%}",
    }
    if key == "correct":
        out["mcnemar"] = mcnemar_exact(np.array(theirs), np.array(ours))
    return out


def sample_size_note(records: list[Record], allowed_points: float, unit: str) -> str | None:
    """A note when the test set is too small for an interval as narrow as the budget."""
    n = next((len(r["per_example"]["correct"]) for r in records if (r.get("per_example") or {}).get("correct")), 0)
    if not n or unit != "points":
        return None
    need = examples_needed(allowed_points)
    if n >= need:
        return None
    half = 1.96 * np.sqrt(0.02 / n) * 100
    return (
        f"{n} test examples give a 95% interval of about ±{half:.2f} points on an accuracy change (at 2% of "
        f"predictions changing), wider than the budget of {allowed_points:.2f} points: about {need} examples "
        "would tell a format within budget from one over it"
    )


def runtime_agreement(records: list[Record]) -> list[dict[str, Any]]:
    """For each format run in several runtimes: do their accuracies agree within their intervals?

    Paired over the same test examples (each runtime's per-example outcomes); a pair is flagged
    when the 95% interval of the difference excludes zero, or McNemar's exact test gives p < 0.05.
    Users of peer tools keep discovering after deploying that one backend is less accurate.
    """
    by_format: dict[str, list[Record]] = {}
    for r in records:
        if r.get("status") == "ok" and (r.get("per_example") or {}).get("correct"):
            by_format.setdefault(r["format"], []).append(r)
    out = []
    for fmt, rs in by_format.items():
        for i, a in enumerate(rs):
            for b in rs[i + 1 :]:
                ca, cb = np.array(a["per_example"]["correct"]), np.array(b["per_example"]["correct"])
                if ca.shape != cb.shape:
                    continue
                boot = paired_bootstrap(ca, cb)
                mc = mcnemar_exact(ca, cb)
                ci = [100 * boot["ci"][0], 100 * boot["ci"][1]]
                disagree = ci[0] > 0 or ci[1] < 0 or mc["p_value"] < 0.05
                out.append(
                    {
                        "format": fmt,
                        "runtimes": [a["runtime"], b["runtime"]],
                        "difference_points": 100 * boot["delta"],
                        "difference_ci": ci,
                        "examples_differing": mc["only_baseline_right"] + mc["only_format_right"],
                        "mcnemar_p": mc["p_value"],
                        "agree": not disagree,
                    }
                )
    return out


def prefill_note(records: list[Record], winner_key: str | None, prefill: str = "batch_1") -> str | None:
    """For a causal LM recommended on decode speed: a note when the winner's prefill is slower than
    FP32's in its runtime with non-overlapping intervals (a decode win is not a prompt win)."""
    win = next((r for r in records if f"{r.get('format')} · {r.get('runtime')}" == winner_key), None)
    if win is None:
        return None
    base = next(
        (r for r in records if r.get("format") == "fp32" and r.get("runtime") == baseline_runtime(win["runtime"])),
        None,
    )
    got, ref = (win.get("latency_ms") or {}).get(prefill), ((base or {}).get("latency_ms") or {}).get(prefill)
    if not got or not ref or got["ci95"][0] <= ref["ci95"][1]:
        return None
    return (
        f"{winner_key} decodes faster but its {got['p50']:.0f} ms prefill is {got['p50'] / ref['p50']:.2f}x FP32's "
        f"{ref['p50']:.0f} ms in {base['runtime']}: for long prompts rank on --optimize prefill"  # type: ignore[index]
    )
