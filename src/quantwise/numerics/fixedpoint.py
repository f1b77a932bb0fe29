"""Fixed-point arithmetic: Qm.n formats, integer multipliers and the rounding right shift.

Every fixed-point tensor is an integer ``q`` with zero point 0 standing for ``q * scale``.
Rescaling an int32 accumulator from scale ``s_acc`` to scale ``s_out`` multiplies by the real
number ``M = s_acc / s_out``, which integer hardware cannot hold. It is written as
``M ≈ m / 2**r`` with an int32 multiplier ``m`` (``2**30 <= m < 2**31`` unless ``r`` is capped)
and a right shift ``r`` in ``[1, 62]``, so that

    y = round_half_even(acc * m / 2**r)      computed as (acc * m) in int64, then shifted

**The rounding rule** is round half to even on the exact integer product (not gemmlowp's
two-step "saturating rounding doubling high multiply" followed by a rounding divide, which
rounds twice). Half to even is what ONNX Runtime and NumPy use when they round a float, so
with power-of-two scales (``m = 2**30``) the integer result equals ONNX Runtime's exactly.
The helpers take NumPy arrays or torch tensors alike and use integer operations only.
"""

from __future__ import annotations

import math
from typing import TypeVar

A = TypeVar("A")  # numpy.ndarray or torch.Tensor of int64

MAX_SHIFT = 62


def pot_scale(scale: float) -> float:
    """The smallest power of two >= ``scale`` (a Qm.n scale never clips the calibrated range)."""
    if scale <= 0 or not math.isfinite(scale):
        raise ValueError(f"a scale must be positive and finite, got {scale}")
    return 2.0 ** math.ceil(math.log2(scale))


def qformat(scale: float, bits: int, signed: bool) -> str | None:
    """The Qm.n name of an integer format with a power-of-two ``scale`` (None otherwise).

    ``Qm.n`` (ARM's convention): n fractional bits, m integer bits, plus a sign bit when signed;
    unsigned formats are written ``UQm.n``. m or n can be negative for very large or small scales.

    Example:
        >>> qformat(2**-7, 8, True)
        'Q0.7'
        >>> qformat(2**-4, 8, False)
        'UQ4.4'
    """
    e = math.log2(scale)
    if not e.is_integer():
        return None
    n = -int(e)
    m = bits - n - (1 if signed else 0)
    return f"{'' if signed else 'U'}Q{m}.{n}"


def quantize_multiplier(real: float) -> tuple[int, int]:
    """``(m, r)`` with ``m / 2**r`` the closest such value to ``real`` (``0 < real < 2**30``).

    Raises:
        ValueError: for a multiplier no int32/shift pair can hold.
    """
    if not 0 < real < 2**30 or not math.isfinite(real):
        raise ValueError(f"a requantization multiplier must be in (0, 2**30), got {real}")
    mant, exp = math.frexp(real)  # real = mant * 2**exp, 0.5 <= mant < 1
    r = 31 - exp
    m = round(mant * 2**31)
    if m == 2**31:  # rounding carried into the next power of two
        m, r = 2**30, r - 1
    if r > MAX_SHIFT:  # tiny multipliers: fewer mantissa bits rather than an out-of-range shift
        m, r = round(real * 2**MAX_SHIFT), MAX_SHIFT
    return int(m), int(r)


def rounding_shift(p: A, r: A | int) -> A:
    """``round_half_even(p / 2**r)`` for int64 ``p`` and shifts ``r >= 1`` (broadcast), integers only.

    ``>>`` on signed integers floors in NumPy and torch alike, so the remainder is non-negative.
    """
    q = p >> r
    rem = p - (q << r)
    half = (q * 0 + 1) << (r - 1)
    up = (rem > half) | ((rem == half) & ((q & 1) == 1))
    return q + up


def requantize(acc: A, m: A, r: A, qmin: int, qmax: int) -> tuple[A, A]:
    """Rescale int64 accumulators by ``m / 2**r`` with rounding, then saturate to ``[qmin, qmax]``.

    Returns ``(values, saturated_mask)``.
    """
    y = rounding_shift(acc * m, r)
    sat = (y < qmin) | (y > qmax)
    return y.clip(qmin, qmax), sat


def int_range(bits: int, signed: bool) -> tuple[int, int]:
    """``(qmin, qmax)`` of a ``bits``-wide integer."""
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def bits_needed(max_abs: int) -> int:
    """Width of a signed integer register that holds every value in ``[-max_abs, max_abs]``."""
    return int(max_abs).bit_length() + 1
