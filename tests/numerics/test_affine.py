"""Affine math against PyTorch's reference quantization ops, and its properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantwise.numerics import (
    INT4,
    INT8,
    UINT4,
    UINT8,
    PerChannel,
    PerGroup,
    PerTensor,
    choose_qparams,
    dequantize,
    fake_quantize,
    pack_int4,
    quantize,
    unpack_int4,
)

POW2_SCALES = [2.0**-k for k in range(2, 9)]


def _on_grid(shape, span, seed):
    """Values k/1024 with |k/1024| <= span, a fixed share of them exact rounding ties."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(-span * 1024, span * 1024 + 1, shape, generator=g)
    ties = torch.rand(shape, generator=g) < 0.1
    k = torch.where(ties, (k // 1024) * 1024 + 512, k)
    return k.float() / 1024


@pytest.mark.parametrize("scale", POW2_SCALES)
@pytest.mark.parametrize(
    "zp,qt,tdt", [(0, INT8, torch.qint8), (4, INT8, torch.qint8), (128, UINT8, torch.quint8), (2, UINT8, torch.quint8)]
)
def test_quantize_per_tensor_matches_torch_exactly(scale, zp, qt, tdt):
    # With power-of-two scales x/scale and x*(1/scale) are the same float, and with an even
    # zero point round_half_even(t + zp) == round_half_even(t) + zp, so the definitions coincide
    # provided the float32 sum t + zp is exact: inputs on a 1/1024-step grid (ties included) keep
    # it exact, where random floats could round t + zp onto a tie and make the test flaky.
    x = _on_grid((4096,), 200, seed=int(zp / scale)) * scale
    ref = torch.quantize_per_tensor(x, scale, zp, tdt)
    q = quantize(x, torch.tensor(scale), torch.tensor(zp), qt)
    assert torch.equal(q.to(torch.int32), ref.int_repr().to(torch.int32))
    assert torch.equal(dequantize(q, torch.tensor(scale), torch.tensor(zp)), ref.dequantize())


def test_odd_zero_point_ties_differ_by_one_step_as_documented():
    # ONNX (and quantwise) round x/scale, then add the zero point; torch rounds x/scale + zp.
    # At an exact tie with an odd zero point the two differ by one step.
    x = torch.tensor([-0.248046875])  # x / 2**-8 == -63.5 exactly
    ref = torch.quantize_per_tensor(x, 2.0**-8, 5, torch.qint8).int_repr()
    ours = quantize(x, torch.tensor(2.0**-8), torch.tensor(5), INT8)
    assert int(ours) == -64 + 5 and int(ref) == -58


def test_quantize_per_tensor_general_scale_within_one_step():
    # For arbitrary scales torch rounds x * (1/scale) and ONNX rounds x / scale: they can
    # differ by one step exactly at rounding ties; everywhere else they agree.
    x = torch.randn(100_000) * 3
    scale, zp = 0.0237, 7
    ref = torch.quantize_per_tensor(x, scale, zp, torch.qint8).int_repr().to(torch.int32)
    q = quantize(x, torch.tensor(scale), torch.tensor(zp), INT8).to(torch.int32)
    diff = (q - ref).abs()
    assert int(diff.max()) <= 1
    assert float((diff > 0).float().mean()) < 1e-3


@pytest.mark.parametrize("axis", [0, 1])
def test_quantize_per_channel_matches_torch_exactly(axis):
    n = (16, 24)[axis]
    x = _on_grid((16, 24), 100, seed=axis)
    x = x * torch.tensor([POW2_SCALES[i % len(POW2_SCALES)] for i in range(n)]).reshape(
        (-1, 1) if axis == 0 else (1, -1)
    )
    scales = torch.tensor([POW2_SCALES[i % len(POW2_SCALES)] for i in range(n)], dtype=torch.float64)
    zps = 2 * torch.randint(-5, 5, (n,))  # even: see the tie note above
    ref = torch.quantize_per_channel(x, scales, zps, axis, torch.qint8)
    q = quantize(x, scales.float(), zps.int(), INT8, PerChannel(axis))
    assert torch.equal(q.to(torch.int32), ref.int_repr().to(torch.int32))
    assert torch.equal(dequantize(q, scales.float(), zps.int(), PerChannel(axis)), ref.dequantize())


@pytest.mark.parametrize("scale", POW2_SCALES[:4])
def test_fake_quantize_per_tensor_matches_torch_forward_and_grad(scale):
    x = (torch.randn(2048) * 200 * scale).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    ours = fake_quantize(x, torch.tensor(scale), torch.tensor(3), INT8)
    ref = torch.fake_quantize_per_tensor_affine(x2, scale, 3, -128, 127)
    assert torch.equal(ours, ref)
    ours.sum().backward()
    ref.sum().backward()
    assert torch.equal(x.grad, x2.grad)
    assert 0 < float(x.grad.sum()) < x.numel()  # some values clipped, some passed straight through


def test_fake_quantize_per_channel_matches_torch():
    x = torch.randn(8, 32) * 3
    scales = torch.tensor([POW2_SCALES[i % len(POW2_SCALES)] for i in range(8)], dtype=torch.float32)
    zps = torch.zeros(8, dtype=torch.int32)
    ref = torch.fake_quantize_per_channel_affine(x, scales, zps, 0, -128, 127)
    assert torch.equal(fake_quantize(x, scales, zps, INT8, PerChannel(0)), ref)


def test_choose_qparams_matches_torch_observer():
    from torch.ao.quantization.observer import MinMaxObserver

    x = torch.randn(1000) * 3 + 1
    for sym, qscheme, dtype, qt in [
        (True, torch.per_tensor_symmetric, torch.qint8, INT8),
        (False, torch.per_tensor_affine, torch.quint8, UINT8),
    ]:
        obs = MinMaxObserver(dtype=dtype, qscheme=qscheme)
        obs(x)
        s_ref, z_ref = obs.calculate_qparams()
        s, z = choose_qparams(x.min(), x.max(), qt, symmetric=sym)
        assert torch.allclose(s, s_ref.squeeze(), rtol=1e-6, atol=0)
        assert int(z) == int(z_ref)


finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=200, deadline=None)
@given(st.lists(finite, min_size=2, max_size=64), st.sampled_from([INT8, UINT8, INT4, UINT4]), st.booleans())
def test_error_within_half_step_inside_range(values, qt, symmetric):
    x = torch.tensor(values, dtype=torch.float32)
    s, z = choose_qparams(x.min(), x.max(), qt, symmetric)
    xh = dequantize(quantize(x, s, z, qt), s, z)
    lo, hi = (qt.qmin - int(z)) * float(s), (qt.qmax - int(z)) * float(s)
    inside = (x >= lo) & (x <= hi)
    assert torch.all((x - xh).abs()[inside] <= float(s) / 2 * (1 + 1e-5) + 1e-6)


@settings(max_examples=200, deadline=None)
@given(st.integers(-128, 127), st.floats(1e-4, 10), st.integers(-20, 20))
def test_grid_values_unchanged(q, scale, zp):
    s, z = torch.tensor(scale), torch.tensor(zp)
    qv = max(-128, min(127, q))
    x = (torch.tensor([qv]) - zp).float() * s
    assert int(quantize(x, s, z, INT8)) == qv


@settings(max_examples=100, deadline=None)
@given(st.floats(1e-3, 1.0), st.sampled_from([INT8, UINT8, INT4, UINT4]))
def test_clamping_at_both_ends(scale, qt):
    s, z = torch.tensor(scale), torch.tensor(0 if qt.signed else qt.qmin)
    x = torch.tensor([-1e9, 1e9])
    q = quantize(x, s, z, qt)
    assert int(q[0]) == qt.qmin and int(q[1]) == qt.qmax


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-8, 7), min_size=2, max_size=64).filter(lambda v: len(v) % 2 == 0), st.booleans())
def test_int4_packing_round_trips(values, signed):
    q = torch.tensor(values, dtype=torch.int8) if signed else (torch.tensor(values) + 8).to(torch.uint8)
    assert torch.equal(unpack_int4(pack_int4(q), signed), q)


def test_int4_packing_layout_low_nibble_first():
    packed = pack_int4(torch.tensor([1, 2, -1, 7], dtype=torch.int8))
    assert packed.tolist() == [0x21, 0x7F]


def test_per_group_quantization_uses_one_scale_per_group():
    w = torch.randn(4, 64)
    w[:, :32] *= 100  # first group much larger
    from quantwise.numerics import quantize_tensor

    q, s, z = quantize_tensor(w, INT4, PerGroup(32), symmetric=True)
    assert s.shape == (4, 2)
    assert torch.all(s[:, 0] > 10 * s[:, 1])
    err = (dequantize(q, s, z, PerGroup(32)) - w)[:, 32:].abs().max()
    assert float(err) <= float(s[:, 1].max()) / 2 + 1e-6
    assert np.isfinite(float(err))
    _ = PerTensor()


def test_full_range_int4_maps_each_blocks_extreme_to_minus_eight() -> None:
    """ONNX Runtime's MatMulNBits quantizer and llama.cpp's Q4_0: scale = extreme / -8 (signed)."""
    from quantwise.numerics import INT4, dequantize, quantize_tensor
    from quantwise.numerics.granularity import PerGroup

    w = torch.tensor([[0.5, -0.25, 1.6, 0.1] * 8, [-2.0, 0.3, 0.7, -0.1] * 8])
    q, s, z = quantize_tensor(w, INT4, PerGroup(32), True, full_range=True)
    assert torch.equal(z, torch.zeros_like(z))
    assert s[0, 0] == pytest.approx(-0.2) and s[1, 0] == pytest.approx(0.25)  # 1.6 / -8 and -2.0 / -8
    assert q[0, 2] == -8 and q[1, 0] == -8  # the extreme value is represented exactly
    half, _, _ = quantize_tensor(w, INT4, PerGroup(32), True)  # max|w| / 7.5: a coarser step
    err_full = (dequantize(q, s, z, PerGroup(32)) - w).abs().sum()
    err_half = (dequantize(half, *quantize_tensor(w, INT4, PerGroup(32), True)[1:], PerGroup(32)) - w).abs().sum()
    assert err_full < err_half
