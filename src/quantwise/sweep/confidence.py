"""Decisions that respect the noise: budget checks on intervals, speed wins with confidence, ties.

Pure functions on result records. A record may carry ``uncertainty.worse_ci`` (how much worse
than FP32 the task metric is, as an interval, from the paired bootstrap) and ``latency_ms[b].ci95``
(an interval of the median); without them the point values are used and the decision says so.
"""

from __future__ import annotations

from quantwise.records import Record

TIE_RULE = "more accurate, then smaller, then runs in more runtimes, then name"
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
