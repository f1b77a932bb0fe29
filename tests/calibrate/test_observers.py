"""Observers on distributions where the right answer is known."""

from __future__ import annotations

import pytest
import torch

from quantwise.calibrate.observers import make_observer
from quantwise.errors import UserError
from quantwise.numerics import INT8, UINT8, choose_qparams, fake_quantize


def _feed(name, x, chunks=4, **kw):
    obs = make_observer(name, **kw)
    for c in x.chunk(chunks):
        obs.observe(c)
    return obs.range()


def _mse(x, rng, qt=INT8, symmetric=True):
    s, z = choose_qparams(torch.tensor(rng[0]), torch.tensor(rng[1]), qt, symmetric)
    return float(((fake_quantize(x, s, z, qt) - x) ** 2).mean())


def test_minmax_equals_true_range():
    x = torch.randn(10_000) * 3 + 0.5
    assert _feed("minmax", x) == (float(x.min()), float(x.max()))


def test_percentile_clips_planted_outlier():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(100_000, generator=g) * 2 - 1  # uniform in [-1, 1]
    x[12345] = 500.0
    lo, hi = _feed("percentile", x, percentile=99.9)
    assert hi < 2.0, "the outlier must be clipped"
    assert hi > 0.95 and lo < -0.95, "the bulk must be kept"


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", ["entropy", "mse"])
def test_histogram_methods_beat_minmax_on_laplace_tails(name, seed):
    # Laplace: exponential tails, max ~12 sigma in 200k samples; clipping the sparse tail
    # buys a finer step for the bulk (the optimum for 8 bits is near 9.9 b, per ACIQ).
    torch.manual_seed(seed)
    x = torch.distributions.Laplace(0.0, 1.0).sample((200_000,))
    mm = _mse(x, _feed("minmax", x))
    other = _mse(x, _feed(name, x))
    assert other < 0.9 * mm, f"{name} error {other} vs minmax {mm}"


def test_mse_beats_minmax_on_student_t():
    # Student-t(4): polynomial tails. KL (entropy) clips too hard here and is *not* better
    # in squared error; the MSE search is, by construction.
    torch.manual_seed(0)
    x = torch.distributions.StudentT(4.0).sample((200_000,))
    assert _mse(x, _feed("mse", x)) < 0.7 * _mse(x, _feed("minmax", x))


def test_moving_average_lags_behind_a_range_change():
    obs = make_observer("moving-average", averaging_constant=0.1)
    obs.observe(torch.tensor([-1.0, 1.0]))
    obs.observe(torch.tensor([-11.0, 11.0]))
    lo, hi = obs.range()
    assert lo == pytest.approx(-2.0) and hi == pytest.approx(2.0)


def test_empty_observer_and_nan_input_are_user_errors():
    obs = make_observer("minmax")
    with pytest.raises(UserError, match="saw no data"):
        obs.range()
    with pytest.raises(UserError, match="NaN or Inf"):
        obs.observe(torch.tensor([1.0, float("nan")]))
    with pytest.raises(UserError, match="unknown calibration"):
        make_observer("kl")


def test_relu_activations_keep_a_zero_lower_bound():
    x = torch.relu(torch.randn(50_000))
    for name in ("percentile", "entropy", "mse"):
        lo, hi = _feed(name, x)
        s, z = choose_qparams(torch.tensor(lo), torch.tensor(hi), UINT8, False)
        assert lo == 0.0 and int(z) == 0 and hi > 1.0


def test_entropy_keeps_the_strokes_of_a_normalised_image():
    """The distribution that collapsed entropy calibration: a normalised digit image, where most
    pixels are the background (one spike at -0.4242) and the strokes spread up to 2.82. Folding
    both signs into |x| put the KL minimum on the spike and clipped every stroke to 0.42."""
    g = torch.Generator().manual_seed(0)
    n = 100_000
    x = torch.full((n,), -0.4242)
    strokes = torch.rand(n, generator=g) < 0.2
    x[strokes] = -0.4242 + torch.rand(int(strokes.sum()), generator=g) * (2.8215 + 0.4242)
    lo, hi = _feed("entropy", x)
    assert lo == pytest.approx(-0.4242, abs=1e-3), "the background spike must be on the grid, not clipped"
    clipped = float(((x > hi) & strokes).float().mean() / strokes.float().mean())
    assert clipped < 0.05 and hi > 2.5, f"entropy clipped {clipped:.1%} of the strokes (range ends at {hi:.2f})"
    assert _mse(x, (lo, hi), UINT8, False) < _mse(x, (-0.4242, 0.4242), UINT8, False) / 10


def test_entropy_gives_a_relu_output_all_256_levels():
    g = torch.Generator().manual_seed(1)
    x = torch.relu(torch.randn(50_000, generator=g))
    lo, hi = _feed("entropy", x)
    # 128 levels (the signed half-grid) chose 1.48 here, with 3.8x the squared error of this range.
    assert lo == 0.0 and hi > 1.8
    assert _mse(x, (lo, hi), UINT8, False) < _mse(x, (0.0, 1.48), UINT8, False) / 2
