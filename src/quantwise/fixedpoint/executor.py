"""The integer-only reference executor: NumPy, integer arithmetic only.

No float appears on this path (a test checks the source for float literals, true division and
float types, and the dtype of every intermediate). Tensors are int64 arrays holding the values
of their fixed-point format; Conv2d and Linear accumulate exactly, or, where the worst case can
overflow the accumulator and the recipe said ``saturate``, one product at a time with saturation,
in the order the C export uses: bias first, then input channel, kernel row, kernel column.

Per Conv2d/Linear it records the widest accumulator seen, how many outputs saturated when
rescaled to the output format, and how many accumulations saturated the accumulator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from quantwise.fixedpoint.graph import Node, Program
from quantwise.numerics.fixedpoint import bits_needed, rounding_shift


@dataclass
class LayerStats:
    outputs: int = 0
    acc_max_abs: int = 0
    saturated_outputs: int = 0
    accumulator_overflows: int = 0

    def to_dict(self, worst_bits: int) -> dict[str, Any]:
        return {
            "outputs": self.outputs,
            "accumulator_bits_worst_case": worst_bits,
            "accumulator_bits_observed": bits_needed(self.acc_max_abs),
            "saturated_outputs": self.saturated_outputs,
            "accumulator_overflows": self.accumulator_overflows,
        }


@dataclass
class IntegerParams:
    """The plan's integers as NumPy int64 arrays: ``layers[name] = (weight (N, K), bias, multiplier, shift)``."""

    program: Program
    layers: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    worst_bits: dict[str, int]
    accumulator: int
    stats: dict[str, LayerStats] = field(default_factory=dict)


def integer_params(plan: Any) -> IntegerParams:
    """Convert a :class:`~quantwise.fixedpoint.plan.FixedPointPlan`'s integers to NumPy."""
    layers = {}
    for name, lp in plan.layers.items():
        w = lp.weight.to(dtype=lp.bias.dtype).numpy().astype(np.int64)
        layers[name] = (
            w.reshape(w.shape[0], -1),
            lp.bias.numpy().astype(np.int64),
            lp.multiplier.numpy().astype(np.int64),
            lp.shift.numpy().astype(np.int64),
        )
    return IntegerParams(plan.program, layers, {n: lp.worst_bits for n, lp in plan.layers.items()}, plan.accumulator)


def execute(p: IntegerParams, x: np.ndarray, trace: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Run the program on integer input ``x`` (batch first); returns the integer output.

    With ``trace``, every tensor is stored there by name.
    """
    if x.dtype.kind not in "iu":
        raise TypeError(f"the integer executor takes integer input, got {x.dtype}")
    env = {p.program.input: x.astype(np.int64)}
    for n in p.program.nodes:
        env[n.output] = _run(p, n, [env[i] for i in n.inputs])
    if trace is not None:
        trace.update(env)
    return env[p.program.output]


def _run(p: IntegerParams, n: Node, xs: list[np.ndarray]) -> np.ndarray:
    a = n.attrs
    if n.op == "conv2d":
        x = xs[0]
        win = _patches(x, a["kernel"], a["stride"], a["padding"], 0)  # (B, C, Ho, Wo, kh, kw)
        b, c, ho, wo, kh, kw = win.shape
        cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(b * ho * wo, c * kh * kw)  # order: channel, row, column
        y = _heavy(p, n, cols, a.get("groups", 1))  # (B*Ho*Wo, N)
        return y.reshape(b, ho, wo, -1).transpose(0, 3, 1, 2)
    if n.op == "linear":
        return _heavy(p, n, xs[0])
    if n.op in ("relu", "relu6"):
        return xs[0].clip(a["clip"][0], a["clip"][1])
    if n.op == "maxpool":
        return _pool(xs[0], a["kernel"], a["stride"], a["padding"], "max")
    if n.op == "avgpool":
        s = _pool(xs[0], a["kernel"], a["stride"], [0, 0], "sum")
        return rounding_shift(s * a["multiplier"], a["shift"])
    if n.op == "add":
        ya = rounding_shift(xs[0] * a["multiplier"][0], a["shift"][0])
        yb = rounding_shift(xs[1] * a["multiplier"][1], a["shift"][1])
        return (ya + yb).clip(a["clip"][0], a["clip"][1])
    if n.op == "pad":
        left, right, top, bottom = a["pad"]
        return np.pad(xs[0], ((0, 0), (0, 0), (top, bottom), (left, right)))  # zero point 0: real 0 is 0
    return xs[0].reshape(xs[0].shape[0], *a["shape"])


def _heavy(p: IntegerParams, n: Node, x: np.ndarray, groups: int = 1) -> np.ndarray:
    """Accumulate ``x (M, K) @ w.T + bias`` and rescale to the output format.

    With ``groups`` g, input column block i (of K/g) meets only output channel block i (of N/g),
    as in a grouped or depthwise convolution; ``w`` is then ``(N, K/g)``.
    """
    w, b, m, r = p.layers[n.layer]
    st = p.stats.setdefault(n.layer, LayerStats())
    lo, hi = -(1 << (p.accumulator - 1)), (1 << (p.accumulator - 1)) - 1
    rows, k_g = x.shape[0], w.shape[1]
    xg = x.reshape(rows, groups, k_g).transpose(1, 0, 2)  # (g, M, K/g)
    wg = w.reshape(groups, -1, k_g)  # (g, N/g, K/g)
    if p.worst_bits[n.layer] <= p.accumulator:
        # exact: no partial sum can leave the accumulator's range
        acc = np.matmul(xg, wg.transpose(0, 2, 1)).transpose(1, 0, 2).reshape(rows, -1) + b
    else:
        acc = np.broadcast_to(b, (rows, w.shape[0])).copy()
        for k in range(k_g):  # one product at a time, saturating, as the hardware would
            acc += (xg[:, :, k, None] * wg[:, None, :, k]).transpose(1, 0, 2).reshape(rows, -1)
            over = (acc < lo) | (acc > hi)
            st.accumulator_overflows += int(over.sum())
            np.clip(acc, lo, hi, out=acc)
    lo_out, hi_out = n.attrs["clip"]
    y = rounding_shift(acc * m, r)
    # saturation: beyond the output format; clipping by a fused ReLU/ReLU6 is the activation itself
    act = n.attrs.get("act")
    sat = (y > hi_out).sum() if act != "relu6" else 0
    sat += (y < lo_out).sum() if act is None else 0
    st.outputs += y.size
    st.acc_max_abs = max(st.acc_max_abs, int(np.abs(acc).max()))
    st.saturated_outputs += int(sat)
    return y.clip(lo_out, hi_out)


def _patches(x: np.ndarray, kernel: list[int], stride: list[int], padding: list[int], fill: int) -> np.ndarray:
    """Sliding windows ``(B, C, Ho, Wo, kh, kw)`` of ``x`` padded with ``fill``."""
    ph, pw = padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    win = np.lib.stride_tricks.sliding_window_view(xp, tuple(kernel), axis=(2, 3))
    return win[:, :, :: stride[0], :: stride[1]]


def _pool(x: np.ndarray, kernel: list[int], stride: list[int], padding: list[int], how: str) -> np.ndarray:
    if how == "max":
        low = int(np.iinfo(np.int64).min)
        return _patches(x, kernel, stride, padding, low).max(axis=(4, 5))
    return _patches(x, kernel, stride, padding, 0).sum(axis=(4, 5))
