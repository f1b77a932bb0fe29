"""Latency: median, p90 and a 95% interval of the median per call after warm-up, with the
machine's load measured during the timing; a noisy measurement is re-timed once and flagged."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np

from quantwise.measure.stats import median_interval
from quantwise.records import Latency

NOISY_OTHER_SHARE = 0.25  # other processes used more than a quarter of the machine's CPU time
NOISY_CI_WIDTH = 0.15  # the median's 95% interval is wider than 15% of the median
NOISY_REFERENCE_SLOWDOWN = 1.3  # the reference kernel ran 30% slower than its best in this process
WARMUP_SECONDS = 1.0  # untimed calls stop once they took this long

_REFERENCE_DATA = np.random.default_rng(0).standard_normal(40_000).astype(np.float32)
_reference_best: list[float] = []  # the fastest reference time seen in this process (ms)


def reference_ms(repeats: int = 7) -> float:
    """Median time of a fixed single-threaded kernel (sorting 40,000 floats), in ms.

    Timed before each latency measurement: when the host itself is contended (another virtual
    machine, a throttled CPU) every timing slows down, including this one, though ``/proc/stat``
    inside the machine may show nothing.
    """
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.sort(_REFERENCE_DATA)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def reference_check() -> dict[str, float]:
    """``{"ms", "best_ms", "slowdown"}``: the reference kernel now against its best in this process."""
    now = reference_ms()
    best = min([now, *_reference_best])
    _reference_best[:] = [best]
    return {"ms": round(now, 4), "best_ms": round(best, 4), "slowdown": round(now / best, 3)}


def _cpu_busy() -> tuple[float, float]:
    """(busy seconds of the whole machine, CPU seconds of this process) so far; (0, 0) off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            parts = [float(v) for v in f.readline().split()[1:]]
        tick = os.sysconf("SC_CLK_TCK")
        busy = (sum(parts) - parts[3] - (parts[4] if len(parts) > 4 else 0.0)) / tick  # minus idle and iowait
        t = os.times()
        return busy, t.user + t.system
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0


def _time(fn: Callable[[], object], iters: int, min_seconds: float, max_seconds: float) -> tuple[list[float], float]:
    times: list[float] = []
    busy0, own0 = _cpu_busy()
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        elapsed = time.perf_counter() - start
        if (len(times) >= iters and elapsed >= min_seconds) or (elapsed > max_seconds and len(times) >= 3):
            break
    busy1, own1 = _cpu_busy()
    cores = os.cpu_count() or 1
    other = max(0.0, (busy1 - busy0) - (own1 - own0)) / max(elapsed * cores, 1e-9)
    return times, min(other, 1.0)


def measure_latency(
    fn: Callable[[], object], warmup: int = 3, iters: int = 20, min_seconds: float = 0.0, max_seconds: float = 10.0
) -> Latency:
    """Time ``fn()``; returns ``{"p50", "p90", "ci95", "n", "other_load", "noisy", "retimed", "reference"}`` (ms).

    Runs ``warmup`` untimed calls (fewer once they took ``WARMUP_SECONDS``; at least one), then at
    least ``iters`` timed calls (or until ``min_seconds``), stopping early once ``max_seconds`` of
    timed calls have passed (at least 3 calls).
    ``other_load`` is the share of the machine's CPU time other processes used meanwhile; when it
    or the interval's width is too large, or the reference kernel timed just before ran more than
    30% slower than its best in this process (host contention), the timing is repeated once, and
    ``noisy`` says whether the kept timing still was.
    """
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
        if time.perf_counter() - t0 > WARMUP_SECONDS:  # a call this long is warm after one (a prefill)
            break
    result: Latency = {}
    for attempt in range(2):
        reference = reference_check()
        slow_host = reference["slowdown"] > NOISY_REFERENCE_SLOWDOWN
        times, other = _time(fn, iters, min_seconds, max_seconds)
        a = np.array(times)
        p50 = float(np.percentile(a, 50))
        ci = median_interval(a)
        loaded = other > NOISY_OTHER_SHARE
        wide = (ci[1] - ci[0]) > NOISY_CI_WIDTH * p50
        result = {
            "p50": p50,
            "p90": float(np.percentile(a, 90)),
            "ci95": ci,
            "n": len(times),
            "other_load": round(other, 3),
            "noisy": bool(loaded or wide or slow_host),
            "retimed": attempt == 1,
            "reference": reference,
        }
        if not (
            loaded or slow_host or (wide and len(times) >= 10)
        ):  # few long calls are wide by nature: re-timing won't help
            break
    return result


class StageClock:
    """Wall seconds of a trial's stages, each from the end of the one before (``stage_seconds``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(now - self._t, 3)
        self._t = now
