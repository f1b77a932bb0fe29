"""Uncertainty: paired bootstrap intervals, McNemar's exact test, and intervals of a median.

Pure functions on arrays. Fixed seed and stated level and resample count, so a rerun gives the
same interval; every function returns what it was computed with.
"""

from __future__ import annotations

from typing import Any

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000
SEED = 0


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = SEED,
    from_mean: str = "mean",
) -> dict[str, Any]:
    """Interval of ``f(mean(b)) - f(mean(a))`` over the same examples (paired: one resample of
    example indices is used for both). ``a`` and ``b``: per-example scores (1/0 correct, a loss
    ...); ``f`` is the identity (``from_mean="mean"``) or ``exp`` (perplexity from mean NLL)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired scores must be two 1-D arrays of one length, got {a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    if from_mean not in ("mean", "exp"):
        raise ValueError(f"from_mean must be mean or exp, got {from_mean!r}")

    def f(x: Any) -> Any:
        return np.exp(x) if from_mean == "exp" else x

    idx = rng.integers(0, len(a), size=(resamples, len(a)))
    means = f(b[idx].mean(axis=1)) - f(a[idx].mean(axis=1))
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {
        "delta": float(f(b.mean()) - f(a.mean())),
        "ci": [float(lo), float(hi)],
        "level": level,
        "resamples": resamples,
        "seed": seed,
        "n": int(len(a)),
    }


def mcnemar_exact(a_correct: np.ndarray, b_correct: np.ndarray) -> dict[str, Any]:
    """McNemar's exact test on paired right/wrong outcomes: the two-sided p-value that the
    examples only one of the two gets right split as they do by chance."""
    from scipy.stats import binomtest

    a, b = np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = only_a + only_b
    p = 1.0 if n == 0 else float(binomtest(only_b, n, 0.5).pvalue)
    return {"only_baseline_right": only_a, "only_format_right": only_b, "p_value": p}


def median_interval(
    times: np.ndarray, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = SEED
) -> list[float]:
    """Bootstrap interval of the median of ``times``."""
    t = np.asarray(times, dtype=np.float64)
    rng = np.random.default_rng(seed)
    meds = np.median(t[rng.integers(0, len(t), size=(resamples, len(t)))], axis=1)
    lo, hi = np.quantile(meds, [(1 - level) / 2, 1 - (1 - level) / 2])
    return [float(lo), float(hi)]


def ratio_interval(base: list[float], other: list[float]) -> list[float]:
    """Conservative interval of ``base / other`` from the two medians' intervals."""
    return [base[0] / other[1], base[1] / other[0]] if other[0] > 0 else [0.0, float("inf")]


def examples_needed(allowed_points: float, level: float = LEVEL) -> int:
    """Examples for the 95% interval of an accuracy change to be about as narrow as the budget.

    A paired change is a mean of -1/0/+1 per example, whose variance is about the share ``r``
    of examples whose outcome changes; half-width ``z * sqrt(r / n)`` equals the budget at
    ``n = z**2 * r / budget**2``, here with ``r = 2%`` (typical of an 8-bit model)."""
    if allowed_points <= 0:
        return 0
    half = allowed_points / 100.0
    z = 1.96 if level == 0.95 else 2.58
    return int(np.ceil((z / half) ** 2 * 0.02))  # 2% of examples changing prediction, a typical quantized model
