"""Latency: median and p90 per call after warm-up, with a fixed thread count."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def measure_latency(
    fn: Callable[[], object], warmup: int = 3, iters: int = 20, min_seconds: float = 0.0, max_seconds: float = 10.0
) -> dict[str, float]:
    """Time ``fn()``; returns ``{"p50": ms, "p90": ms, "n": calls}``.

    Runs ``warmup`` untimed calls, then at least ``iters`` timed calls (or until ``min_seconds``),
    stopping early once ``max_seconds`` of timed calls have passed (at least 3 calls).
    """
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        elapsed = time.perf_counter() - start
        if (len(times) >= iters and elapsed >= min_seconds) or (elapsed > max_seconds and len(times) >= 3):
            break
    a = np.array(times)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)), "n": len(times)}
