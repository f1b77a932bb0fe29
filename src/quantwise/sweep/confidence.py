"""Decisions that respect the noise: budget checks on intervals, speed wins with confidence, ties.

Pure functions on result records. A record may carry ``uncertainty.worse_ci`` (how much worse
than FP32 the task metric is, as an interval, from the paired bootstrap) and ``latency_ms[b].ci95``
(an interval of the median); without them the point values are used and the decision says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from quantwise.measure.stats import mcnemar_exact, paired_bootstrap
from quantwise.records import Record
from quantwise.tasks.base import MetricSpec

SIZE_MARGIN = 0.2  # inside a tie, a format at least this much smaller wins over the faster median
TIE_RULE = (
    "drop formats significantly less accurate than the tie's most accurate (McNemar's exact test, or the "
    f"paired 95% interval, on the same examples), then formats at least {SIZE_MARGIN:.0%} larger than the "
    "smallest left, then the faster median, then runs in more runtimes, then name"
)
# Why only significant differences: measured on mnist-cnn (benchmarks/README.md), the formats near the
# fastest move in and out of a tie from run to run; a rule that let one or two test examples decide
# recommended a different format in each of three quiet runs.
TIE_MARGIN = 0.05  # medians this close are a tie even when their intervals do not overlap: one run's
# interval (thousands of calls) misses the drift between formats timed minutes apart. Measured here:
# static-int8-full in LiteRT at 0.0375, 0.0376 and 0.0352 ms in three make compare runs (6.8% apart),
# while each run's 95% interval was under 0.3% wide.


def latency_ci(r: Record, batch: str) -> list[float] | None:
    lat = (r.get("latency_ms") or {}).get(batch)
    if not lat:
        return None
    ci = lat.get("ci95")
    return [float(ci[0]), float(ci[1])] if ci else [float(lat["p50"]), float(lat["p50"])]


def budget_confidence(r: Record, worse: float, allowed: float) -> str:
    """``confident`` (the whole interval is within budget), ``possibly`` (the estimate is, the
    interval's worse end is not), or ``point`` (no interval: the estimate is within budget)."""
    ci = (r.get("uncertainty") or {}).get("worse_ci")
    if ci is None:
        return "point"
    return "confident" if ci[1] <= allowed + 1e-12 else "possibly"


def faster_with_confidence(r: Record, base: Record, batches: list[str]) -> str | None:
    """None when ``r`` is faster than FP32 with its interval entirely below FP32's at every
    batch size measured, else why not (a format is never called a speed win on noise)."""
    for b in batches:
        a, f = latency_ci(r, b), latency_ci(base, b)
        if a is None or f is None:
            continue
        if a[1] < f[0]:
            continue
        pa, pf = r["latency_ms"][b]["p50"], base["latency_ms"][b]["p50"]
        if pa >= pf:
            return f"slower than FP32 at {b.replace('_', ' ')} ({pf / pa:.2f}x): not a speed win"
        return f"not faster than FP32 with confidence at {b.replace('_', ' ')} ({pf / pa:.2f}x, intervals overlap)"
    return None


def overlaps(a: list[float] | None, b: list[float] | None) -> bool:
    return a is not None and b is not None and a[0] <= b[1] and b[0] <= a[1]


def indistinguishable(r: Record, best: Record, batch: str) -> bool:
    """Latencies that cannot be told apart: 95% intervals overlap, or medians within TIE_MARGIN."""
    a, b = latency_ci(r, batch), latency_ci(best, batch)
    if a is None or b is None:
        return False
    pa, pb = r["latency_ms"][batch]["p50"], best["latency_ms"][batch]["p50"]
    return overlaps(a, b) or abs(pa - pb) <= TIE_MARGIN * min(pa, pb)


def per_example_key(spec: MetricSpec) -> str | None:
    """Which per-example values a record keeps for the metric (``correct`` for accuracy)."""
    return "correct" if spec.name == "accuracy" else spec.per_example


def significantly_worse(r: Record, best: Record, spec: MetricSpec) -> bool:
    """Is ``r`` worse than ``best`` on the metric beyond chance, on the same examples?

    Accuracy: McNemar's exact test (p < 0.05) on the examples only one of them gets right;
    other metrics: the paired bootstrap interval of the difference excludes zero. Without
    per-example values on both, any difference in the point values counts."""
    sign = 1 if spec.higher_is_better else -1
    point_worse = sign * (best["metrics"][spec.name] - r["metrics"][spec.name]) > 1e-12
    name = per_example_key(spec)
    a = (best.get("per_example") or {}).get(name) if name else None
    b = (r.get("per_example") or {}).get(name) if name else None
    if a is None or b is None or len(a) != len(b) or len(a) == 0:
        return point_worse
    ours, theirs = np.asarray(b), np.asarray(a)
    if name == "correct":
        return point_worse and bool(mcnemar_exact(theirs, ours)["p_value"] < 0.05)
    ci: Any = paired_bootstrap(theirs, ours, from_mean=spec.from_mean)["ci"]
    return bool(ci[1] < 0) if spec.higher_is_better else bool(ci[0] > 0)
