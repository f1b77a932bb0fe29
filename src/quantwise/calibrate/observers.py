"""Calibration observers: watch activations, then propose a ``(min, max)`` range.

Every observer is fed batches with :meth:`Observer.observe` and answers :meth:`Observer.range`.
The histogram-based ones (percentile, entropy, MSE) keep a fixed-size histogram whose
range grows as larger values arrive (old counts are re-binned into the wider range), so
memory stays constant however much calibration data passes through.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from quantwise.errors import UserError
from quantwise.recipes import CALIBRATIONS


class Observer:
    """Base class: tracks the exact running min and max."""

    def __init__(self) -> None:
        self.min_val = math.inf
        self.max_val = -math.inf
        self.count = 0

    def observe(self, x: torch.Tensor) -> None:
        """Record one batch of values."""
        x = x.detach()
        if x.numel() == 0:
            return
        x = x.to(torch.float32)
        if not torch.isfinite(x).all():
            raise UserError("calibration produced NaN or Inf activations: check the model weights and inputs")
        self.min_val = min(self.min_val, float(x.min()))
        self.max_val = max(self.max_val, float(x.max()))
        self.count += x.numel()
        self._observe(x)

    def _observe(self, x: torch.Tensor) -> None:
        """Hook for subclasses."""

    def range(self) -> tuple[float, float]:
        """The chosen ``(min, max)``."""
        self._check()
        return self.min_val, self.max_val

    def _check(self) -> None:
        if self.count == 0:
            raise UserError("an observer saw no data: the calibration set is empty or never reached this layer")


class MinMaxObserver(Observer):
    """The exact range of everything observed."""


class MovingAverageMinMaxObserver(Observer):
    """Exponential moving average of per-batch min and max (``averaging_constant`` weight on the new batch)."""

    def __init__(self, averaging_constant: float = 0.01) -> None:
        super().__init__()
        self.c = averaging_constant
        self.avg: tuple[float, float] | None = None

    def _observe(self, x: torch.Tensor) -> None:
        lo, hi = float(x.min()), float(x.max())
        if self.avg is None:
            self.avg = (lo, hi)
        else:
            self.avg = (self.avg[0] + self.c * (lo - self.avg[0]), self.avg[1] + self.c * (hi - self.avg[1]))

    def range(self) -> tuple[float, float]:
        self._check()
        assert self.avg is not None
        return self.avg


class HistogramObserver(Observer):
    """Keeps a histogram of values over ``[-R, R]``, R the running absolute maximum."""

    def __init__(self, bins: int = 2048) -> None:
        super().__init__()
        self.bins = bins
        self.hist = np.zeros(bins, dtype=np.float64)
        self.bound = 0.0

    def _observe(self, x: torch.Tensor) -> None:
        amax = max(abs(self.min_val), abs(self.max_val), 1e-12)
        if amax > self.bound:
            self._rebin(amax)
        h = torch.histc(x.flatten(), bins=self.bins, min=-self.bound, max=self.bound)
        self.hist += h.numpy().astype(np.float64)

    def _rebin(self, new_bound: float) -> None:
        if self.bound > 0 and self.hist.sum() > 0:
            old_edges = np.linspace(-self.bound, self.bound, self.bins + 1)
            centers = (old_edges[:-1] + old_edges[1:]) / 2
            idx = np.clip(((centers + new_bound) / (2 * new_bound) * self.bins).astype(int), 0, self.bins - 1)
            new = np.zeros_like(self.hist)
            np.add.at(new, idx, self.hist)
            self.hist = new
        self.bound = new_bound

    def centers(self) -> np.ndarray:
        """Bin centres, shape ``(bins,)``."""
        edges = np.linspace(-self.bound, self.bound, self.bins + 1)
        return (edges[:-1] + edges[1:]) / 2

    def _quantile(self, q: float) -> float:
        cdf = np.cumsum(self.hist) / self.hist.sum()
        i = int(np.searchsorted(cdf, q))
        edges = np.linspace(-self.bound, self.bound, self.bins + 1)
        return float(edges[min(i + 1, self.bins)])


class PercentileObserver(HistogramObserver):
    """Clips the tails: the range spans the ``(100 - p)``th to ``p``th percentile."""

    def __init__(self, percentile: float = 99.99, bins: int = 2048) -> None:
        if not 50.0 < percentile <= 100.0:
            raise UserError(f"percentile must be in (50, 100], got {percentile}")
        super().__init__(bins)
        self.percentile = percentile

    def range(self) -> tuple[float, float]:
        self._check()
        p = self.percentile / 100.0
        lo = max(self.min_val, self._quantile(1.0 - p)) if self.min_val < 0 else self.min_val
        hi = min(self.max_val, self._quantile(p))
        return min(lo, 0.0) if self.min_val < 0 else lo, hi


class EntropyObserver(HistogramObserver):
    """KL-divergence threshold search (TensorRT's calibration, as ONNX Runtime implements it).

    For each candidate threshold the clipped reference distribution P is compared with its
    quantized version Q, and the threshold with the smallest ``KL(P || Q)`` wins. Each side of
    zero is searched on its own histogram with the levels the 8-bit grid gives it: a
    non-negative tensor (after a ReLU) gets all 256 levels over ``[0, t]``; a tensor with both
    signs gets 128 per side and the range ``[-t_neg, t_pos]``.

    Folding both signs into one ``|x|`` histogram with a symmetric range (the textbook form)
    collapses on asymmetric inputs: a normalised image's background is one spike at
    ``-0.42``, the KL minimum sits on that spike, and ``[-0.42, 0.42]`` clipped every stroke
    of mnist's digits (93.05% vs 99.83% with min-max); ``test_observers`` plants that shape.
    """

    def __init__(self, bins: int = 2048, levels: int = 128) -> None:
        super().__init__(bins)
        self.levels = levels

    def range(self) -> tuple[float, float]:
        self._check()
        half = self.bins // 2
        pos, neg = self.hist[half:].copy(), self.hist[:half][::-1].copy()  # (bins/2,) counts of x >= 0 and of -x > 0
        full = 2 * self.levels  # the 8-bit grid's levels
        if self.min_val >= 0:
            return self.min_val, min(_kl_threshold(pos, self.bound, full), self.max_val)
        if self.max_val <= 0:
            return max(-_kl_threshold(neg, self.bound, full), self.min_val), self.max_val
        t_pos = _kl_threshold(pos, self.bound, self.levels)
        t_neg = _kl_threshold(neg, self.bound, self.levels)
        return max(-t_neg, self.min_val), min(t_pos, self.max_val)


def _kl_threshold(hist: np.ndarray, bound: float, levels: int) -> float:
    n = len(hist)
    if n <= levels:
        return bound
    best_kl, best_i = math.inf, n
    for i in range(levels, n + 1, max(1, (n - levels) // 256)):
        p = hist[:i].copy()
        p[i - 1] += hist[i:].sum()
        nz = p > 0
        # Merge i bins into `levels` groups, spread each group's mass over its non-empty bins.
        edges = np.linspace(0, i, levels + 1).astype(int)
        q = np.zeros(i)
        for a, b in zip(edges[:-1], edges[1:]):
            seg = hist[a:b]
            m = nz[a:b]
            if m.any():
                q[a:b][m] = seg.sum() / m.sum()
        ps, qs = p[nz], q[nz]
        if ps.sum() == 0 or (qs == 0).any():
            continue
        ps, qs = ps / ps.sum(), qs / qs.sum()
        kl = float(np.sum(ps * np.log(ps / qs)))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return bound * best_i / n


class MSEObserver(HistogramObserver):
    """Chooses the clipping range that minimises the expected squared quantization error.

    Candidates shrink the observed range geometrically by factors from 1 down to 1/1000.
    For each, the error is estimated on the histogram: values inside the range contribute
    the rounding error of a uniform step (``step**2 / 12``), values outside their clipping
    error. The grid is 8-bit affine (``levels`` steps).
    """

    def __init__(self, bins: int = 2048, levels: int = 256, steps: int = 120) -> None:
        super().__init__(bins)
        self.levels = levels
        self.steps = steps

    def range(self) -> tuple[float, float]:
        self._check()
        c, w = self.centers(), self.hist
        best, best_err = (self.min_val, self.max_val), math.inf
        for f in np.geomspace(1.0, 1e-3, self.steps):
            lo, hi = min(self.min_val, 0.0) * f, max(self.max_val, 0.0) * f
            step = max((hi - lo) / (self.levels - 1), 1e-12)
            inside = (c >= lo) & (c <= hi)
            clip = np.where(c < lo, lo - c, np.where(c > hi, c - hi, 0.0))
            err = float(np.sum(w * clip**2) + np.sum(w[inside]) * step**2 / 12)
            if err < best_err:
                best_err, best = err, (lo, hi)
        return best


OBSERVERS = {
    "minmax": MinMaxObserver,
    "moving-average": MovingAverageMinMaxObserver,
    "percentile": PercentileObserver,
    "entropy": EntropyObserver,
    "mse": MSEObserver,
}
assert tuple(OBSERVERS) == CALIBRATIONS, "recipes.CALIBRATIONS declares the observers users can name"


def make_observer(name: str, **kwargs: float) -> Observer:
    """Build an observer by the name users type (``--calibration``)."""
    try:
        cls = OBSERVERS[name]
    except KeyError:
        raise UserError(f"unknown calibration method {name!r}: choose one of {', '.join(OBSERVERS)}") from None
    return cls(**kwargs)  # type: ignore[arg-type]
