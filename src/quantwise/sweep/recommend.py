"""Choosing a format: accuracy budget, objective, hardware profile. Pure functions on result records.

A record here needs ``format``, ``runtime``, ``status``, ``family``, ``metrics[metric]``,
``latency_ms``, ``size_bytes`` and ``peak_memory_bytes``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from quantwise.errors import UserError
from quantwise.records import Record
from quantwise.runtime.registry import baseline_runtime
from quantwise.sweep.confidence import (
    SIZE_MARGIN,
    TIE_MARGIN,
    TIE_RULE,
    budget_confidence,
    faster_with_confidence,
    indistinguishable,
    significantly_worse,
)
from quantwise.sweep.profiles import Profile
from quantwise.tasks.base import MetricSpec

OBJECTIVES = ("latency", "size", "memory")


@dataclass(frozen=True)
class Budget:
    """A budget on the task's metric: absolute (points for a fraction metric such as accuracy,
    the metric's own units otherwise), or a percentage of the FP32 value. It caps how much
    *worse* a format may be, in the metric's direction (a rise, for perplexity)."""

    value: float
    relative: bool

    def points(self, baseline: float) -> float:
        """Allowed drop in points (percent units) for a baseline score in [0, 1]."""
        return self.value * baseline if self.relative else self.value

    def allowed(self, baseline: float, spec: MetricSpec) -> float:
        """How much worse than ``baseline`` a format may be, in ``spec``'s display units."""
        if self.relative:
            scale = 100.0 if spec.fraction else 1.0
            return self.value / 100.0 * abs(baseline) * scale
        return self.value

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.relative else f"{self.value:g} points"


def parse_budget(text: str | float) -> Budget:
    """``"0.5"`` means 0.5 accuracy points; ``"1%"`` means 1% of the FP32 score."""
    s = str(text).strip()
    rel = s.endswith("%")
    try:
        v = float(s[:-1] if rel else s)
    except ValueError:
        raise UserError(
            f"--max-drop {text!r} is not a number: write points like 0.5 or a relative drop like 1%"
        ) from None
    if not math.isfinite(v) or v < 0:
        raise UserError(f"--max-drop must be a finite number of at least 0, got {text!r}")
    return Budget(v, rel)


def key(r: Record) -> str:
    return f"{r['format']} · {r['runtime']}"


def _objective(r: Record, objective: str, batch: str) -> float | None:
    if objective == "latency":
        lat = r.get("latency_ms", {}).get(batch)
        return lat["p50"] if lat else None
    if objective == "size":
        return r.get("size_bytes")
    return r.get("peak_memory_bytes")


def pareto_front(points: list[tuple[str, float, float]]) -> list[str]:
    """Names of points not dominated: lower cost (x) and higher accuracy (y) are better."""
    front = []
    for name, x, y in points:
        dominated = any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for n2, x2, y2 in points if n2 != name)
        if not dominated:
            front.append(name)
    return front


def recommend(
    records: list[Record],
    budget: Budget,
    objective: str = "latency",
    profile: Profile | None = None,
    metric: str | MetricSpec = "accuracy",
    latency_batch: str = "batch_1",
    speed_batches: list[str] | None = None,
    portability: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Winner, runner-up, why each other format lost, and the Pareto fronts.

    FP32 is the reference, never the answer: when no quantized format meets the budget the
    result says so and names the closest one. ``metric`` carries its direction: a drop in
    accuracy and a rise in perplexity are both "worse".
    """
    spec = metric if isinstance(metric, MetricSpec) else MetricSpec(metric)
    metric = spec.name
    if objective not in OBJECTIVES:
        raise UserError(f"--optimize must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    ok = [r for r in records if r.get("status") == "ok"]
    base = {r["runtime"]: r for r in ok if r["format"] == "fp32"}
    if not base:
        raise UserError("no successful FP32 baseline among the results: the comparison needs one")
    scores = [r["metrics"][metric] for r in base.values()]
    base_score = max(scores) if spec.higher_is_better else min(scores)
    allowed = budget.allowed(base_score, spec)  # display units: points, or the metric's own

    def worse(r: Record) -> float:
        return spec.worse_by(base_score, r["metrics"][metric])

    measured = profile is None or profile.measured
    reasons: dict[str, str] = {}
    confidence: dict[str, str] = {}
    candidates = []
    for r in records:
        k = key(r)
        if r["format"] == "fp32":
            continue
        if r.get("status") != "ok":
            what = "not applicable" if r.get("status") == "unsupported" else "failed"
            reasons[k] = f"{what}: {r.get('error', 'unknown error')}"
            continue
        drop = worse(r)
        if profile is not None and (r.get("family") not in profile.families or r["runtime"] not in profile.runtimes):
            reasons[k] = f"no kernels on {profile.name} for {r.get('family')} in {r['runtime']}"
            continue
        if drop > allowed + 1e-12:
            reasons[k] = f"over budget: {metric} worse by {drop:.4g} {spec.unit} (budget {allowed:.4g})"
            continue
        if objective == "latency" and measured:
            brt = baseline_runtime(r["runtime"])
            b = base.get(brt)
            v, bv = _objective(r, objective, latency_batch), _objective(b, objective, latency_batch) if b else None
            if v is None or bv is None:
                reasons[k] = "latency not measured"
                continue
            why = faster_with_confidence(r, b, speed_batches or [latency_batch])  # type: ignore[arg-type]
            if why:
                reasons[k] = f"{why} (FP32 in {brt})"
                continue
        if objective == "size":
            b = base.get(baseline_runtime(r["runtime"]))
            size, b_size = r.get("size_bytes"), (b or {}).get("size_bytes")
            if size and b_size and size >= b_size:
                reasons[k] = f"not smaller than FP32 in {b['runtime']} ({size} vs {b_size} bytes)"  # type: ignore[index]
                continue
        confidence[k] = budget_confidence(r, drop, allowed)
        candidates.append(r)

    def rank(r: Record) -> tuple[Any, ...]:
        drop = worse(r)
        if objective == "latency" and not measured:
            speed_class = (
                0
                if r.get("family") in ("int8",)
                else 1
                if r.get("family") in ("fp16", "bf16", "int4-weight", "int8-weight")
                else 2
            )
            return (speed_class, r.get("size_bytes") or 0, drop, key(r))
        v = _objective(r, objective, latency_batch)
        sure = 0 if confidence.get(key(r)) != "possibly" else 1  # within budget with confidence first
        return (sure, v if v is not None else float("inf"), drop, r.get("size_bytes") or 0, key(r))

    candidates.sort(key=rank)
    tie = _break_tie(candidates, objective, latency_batch, spec, portability or {}, confidence) if measured else None
    winner = candidates[0] if candidates else None
    runner_up = candidates[1] if len(candidates) > 1 else None
    for r in candidates[2:]:
        reasons[key(r)] = _lost_to(r, winner, objective, latency_batch, measured)  # type: ignore[arg-type]
    if runner_up is not None:
        reasons[key(runner_up)] = "runner-up: " + _lost_to(runner_up, winner, objective, latency_batch, measured)  # type: ignore[arg-type]
    for k in (tie or {}).get("keys", [])[1:]:
        prefix = "runner-up: " if runner_up is not None and k == key(runner_up) else ""
        reasons[k] = f"{prefix}ties {key(winner)} on {objective} ({tie['why']}); loses by the rule: {tie['lost_by'][k]}"  # type: ignore[index,arg-type]
    closest = None
    if winner is None:
        quantized = [r for r in ok if r["format"] != "fp32"]
        if quantized:
            c = min(quantized, key=worse)
            closest = {"key": key(c), "drop_points": worse(c)}
    notes = []
    if profile is not None and not profile.measured:
        notes.append(f"latency was not measured on {profile.name}; ranking uses the kernel families it has, then size")
    if profile is not None and profile.notes:
        notes.append(profile.notes)
    return {
        "objective": objective,
        "budget": str(budget),
        "budget_points": allowed,
        "metric": metric,
        "metric_unit": spec.unit,
        "higher_is_better": spec.higher_is_better,
        "target": profile.name if profile else "this-machine",
        "baseline_score": base_score,
        "winner": {**_summary(winner, worse), "budget_confidence": confidence.get(key(winner))} if winner else None,
        "runner_up": {**_summary(runner_up, worse), "budget_confidence": confidence.get(key(runner_up))}
        if runner_up
        else None,
        "tie": tie,
        "others": reasons,
        "closest": closest,
        "message": _message(winner, closest, budget, objective, spec, confidence, tie),
        "pareto": {
            "latency": pareto_front(_points(ok, worse, lambda r: _objective(r, "latency", latency_batch))),
            "size": pareto_front(_points(ok, worse, lambda r: r.get("size_bytes"))),
        },
        "notes": notes,
    }


def _points(ok: list[Record], worse: Any, cost: Any) -> list[tuple[str, float, float]]:
    """``(name, cost, goodness)``: goodness is minus how much worse than FP32 (higher is better)."""
    return [(key(r), float(cost(r)), -float(worse(r))) for r in ok if cost(r) is not None]


def _summary(r: Record, worse: Any) -> dict[str, Any]:
    return {"key": key(r), "format": r["format"], "runtime": r["runtime"], "drop_points": worse(r)}


def _lost_to(r: Record, w: Record, objective: str, batch: str, measured: bool) -> str:
    if objective == "latency" and not measured:
        return f"ranked below {key(w)} by kernel family and size"
    a, b = _objective(r, objective, batch), _objective(w, objective, batch)
    unit = {"latency": "ms", "size": "bytes", "memory": "bytes"}[objective]
    word = {"latency": "slower", "size": "larger", "memory": "uses more memory"}[objective]
    if a is not None and b is not None and a == b:
        return f"ties {key(w)} on {objective}; loses on accuracy, size or name"
    return (
        f"{word} than {key(w)} ({a:.4g} vs {b:.4g} {unit})"
        if a is not None and b is not None
        else f"{objective} unknown"
    )


def _message(
    winner: Record | None,
    closest: dict[str, Any] | None,
    budget: Budget,
    objective: str,
    spec: MetricSpec,
    confidence: dict[str, str] | None = None,
    tie: dict[str, Any] | None = None,
) -> str:
    if winner:
        sure = (confidence or {}).get(key(winner))
        how = {
            "confident": "; within budget with 95% confidence",
            "possibly": "; possibly within budget (the 95% "
            "interval reaches past it): no format was within budget with confidence",
        }.get(sure or "", "")
        tied = (
            f"; tied on {objective} with {', '.join(k for k in tie['keys'] if k != key(winner))}, chosen by: {tie['rule']}"
            if tie
            else ""
        )
        return f"recommended: {key(winner)} (best {objective} within a drop of {budget}{how}{tied})"
    if closest:
        return (
            f"no quantized format meets the budget of {budget} with a {objective} gain; closest: {closest['key']} "
            f"({spec.name} worse by {closest['drop_points']:.4g} {spec.unit}). Keep FP32 or relax --max-drop."
        )
    return "no quantized format ran successfully; keep FP32"


def _break_tie(
    ranked: list[Record],
    objective: str,
    batch: str,
    spec: MetricSpec,
    portability: dict[str, int],
    confidence: dict[str, str],
) -> dict[str, Any] | None:
    """Reorder, in place, the candidates whose objective cannot be told apart from the best
    (latency intervals overlap or medians close; equal size or memory) by :data:`TIE_RULE`;
    describe the tie and why each tied format lost.

    Only differences that are themselves significant reorder a tie: which formats fall inside
    it moves with the noise, so a rule that let a point difference decide would move too."""
    if len(ranked) < 2:
        return None
    best = ranked[0]

    def same(r: Record) -> bool:
        if objective == "latency":
            return indistinguishable(r, best, batch)
        return _objective(r, objective, batch) == _objective(best, objective, batch)

    sure = confidence.get(key(best))
    group = [r for r in ranked if same(r) and confidence.get(key(r)) == sure]
    if len(group) < 2:
        return None
    lost: dict[str, str] = {}
    sign = -1 if spec.higher_is_better else 1
    top = min(group, key=lambda r: (sign * r["metrics"][spec.name], key(r)))  # the most accurate
    keep = []
    for r in group:
        if r is not top and significantly_worse(r, top, spec):
            lost[key(r)] = f"significantly less accurate than {key(top)}"
        else:
            keep.append(r)
    smallest = min(keep, key=lambda r: (r.get("size_bytes") or 0, key(r)))
    small = smallest.get("size_bytes") or 0
    for r in list(keep):
        size = r.get("size_bytes") or 0
        if small and size and small <= (1 - SIZE_MARGIN) * size:
            lost[key(r)] = f"at least {SIZE_MARGIN:.0%} larger than {key(smallest)} ({size} vs {small} bytes)"
            keep.remove(r)
    keep.sort(key=lambda r: (_objective(r, objective, batch) or 0.0, -portability.get(r["format"], 1), key(r)))
    for r in keep[1:]:
        lost[key(r)] = f"{'a slower median' if objective == 'latency' else 'equal'} than {key(keep[0])}"
    order = keep + [r for r in group if r not in keep]
    ranked[:] = order + [r for r in ranked if r not in order]
    return {
        "keys": [key(r) for r in order],
        "rule": TIE_RULE,
        "lost_by": lost,
        "why": f"their {objective} cannot be told apart"
        + (
            f" (95% intervals of the median overlap, or medians within {TIE_MARGIN:.0%})"
            if objective == "latency"
            else ""
        ),
    }
