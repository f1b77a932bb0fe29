"""Fixed-point arithmetic against exact rational arithmetic, and the no-float rule of the executor."""

from __future__ import annotations

import ast
import inspect
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from quantwise.fixedpoint import executor
from quantwise.numerics import fixedpoint
from quantwise.numerics.fixedpoint import pot_scale, qformat, quantize_multiplier, rounding_shift


def _rne(x: Fraction) -> int:
    """Round half to even, exactly."""
    f = x.numerator // x.denominator
    rem = x - f
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and f % 2):
        return f + 1
    return f


@given(st.integers(-(2**62) + 1, 2**62 - 1), st.integers(1, 62))
def test_rounding_shift_is_exact_round_half_even(p, r):
    want = _rne(Fraction(p, 2**r))
    assert int(rounding_shift(np.array([p], dtype=np.int64), r)[0]) == want
    assert int(rounding_shift(torch.tensor([p], dtype=torch.int64), r)[0]) == want


def test_rounding_shift_ties_go_to_even():
    p = np.array([5, 7, -5, -7, 6, -6], dtype=np.int64)  # /2: 2.5, 3.5, -2.5, -3.5, 3, -3
    assert rounding_shift(p, 1).tolist() == [2, 4, -2, -4, 3, -3]


@given(st.floats(1e-12, 2**29, allow_nan=False, allow_infinity=False))
def test_quantize_multiplier_is_close_and_in_range(real):
    m, r = quantize_multiplier(real)
    assert 1 <= r <= 62 and 0 < m < 2**31
    if r < 62:
        assert m >= 2**30
        assert abs(Fraction(m, 2**r) - Fraction(real)) <= Fraction(real) * Fraction(1, 2**30)


def test_power_of_two_multiplier_is_exact_and_qformats_are_named():
    assert quantize_multiplier(2.0**-7) == (2**30, 37)
    assert pot_scale(0.03) == 2.0**-5 and pot_scale(2.0**-5) == 2.0**-5
    assert qformat(2**-7, 8, True) == "Q0.7" and qformat(2**-4, 8, False) == "UQ4.4" and qformat(0.03, 8, True) is None
    with pytest.raises(ValueError):
        quantize_multiplier(2.0**31)


def _float_uses(module) -> list[str]:
    """Float literals, true divisions and float names in a module's source."""
    tree = ast.parse(inspect.getsource(module))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, float):
            bad.append(f"float literal {node.value} at line {node.lineno}")
        elif isinstance(node, (ast.BinOp, ast.AugAssign)) and isinstance(node.op, ast.Div):
            bad.append(f"true division at line {node.lineno}")
        elif isinstance(node, (ast.Name, ast.Attribute)):
            name = node.id if isinstance(node, ast.Name) else node.attr
            if "float" in name.lower() or name in ("round", "sqrt", "exp", "log", "log2", "mean"):
                bad.append(f"{name} at line {node.lineno}")
    return bad


def test_the_integer_path_has_no_float_in_its_source():
    assert _float_uses(executor) == []
    src = inspect.getsource(fixedpoint.rounding_shift) + inspect.getsource(fixedpoint.bits_needed)
    assert "/" not in src.split('"""')[-1] and "float" not in src.split('"""')[-1]


def test_the_checker_catches_float():
    import quantwise.fixedpoint.simulate as sim  # the float simulation, which must be caught

    assert _float_uses(sim)
