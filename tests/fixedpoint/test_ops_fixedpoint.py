"""Operators beyond the built-in CNN, accumulator overflow, and refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from quantwise.api import quantize
from quantwise.errors import UnsupportedModel, UserError
from quantwise.fixedpoint.cexport import compile_and_run, export_c
from quantwise.fixedpoint.executor import execute, integer_params
from quantwise.fixedpoint.simulate import FixedPointModule, enter
from quantwise.recipes import get_recipe


class Residual(nn.Module):
    """conv-bn-relu6, a residual add, average pooling, flatten and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        h = self.stem(x)
        h = torch.relu(self.body(h) + h)
        h = self.gap(self.pool(h))
        return self.head(torch.flatten(h, 1))


def _model_and_data(seed: int = 0):
    torch.manual_seed(seed)
    m = Residual()
    with torch.no_grad():
        m.stem[1].running_mean.uniform_(-0.2, 0.2)
        m.stem[1].running_var.uniform_(0.5, 2)
    calib = [(torch.randn(16, 3, 8, 8),) for _ in range(4)]
    return m.eval(), calib


def _executor_simulation_and_c_agree(qm, model, x, tmp_path):
    """The integer executor equals the exact simulation and the generated C bit for bit, and stays
    within 8 output steps of the float model; returns its integer output and the output format."""
    fout = qm.plan.formats[qm.plan.program.output]
    xi = enter(x, qm.plan.formats[qm.plan.program.input]).numpy()
    got = execute(integer_params(qm.plan), xi)
    with torch.no_grad():
        sim = FixedPointModule(qm.plan, "exact")(x)
        ref = model(x)
    assert np.array_equal(np.round(sim.double().numpy() / fout.scale).astype(np.int64), got)
    assert np.array_equal(compile_and_run(export_c(qm, tmp_path / "c"), xi, got.shape[1]), got)
    assert np.abs(got * fout.scale - ref.numpy()).max() < 8 * fout.scale
    return got, fout


@pytest.mark.parametrize("pot", [False, True])
def test_residual_model_integer_equals_simulation_and_c(pot, tmp_path):
    model, calib = _model_and_data()
    qm = quantize(model, get_recipe("fixed-point", pot_scales=pot), calib)
    ops = [n.op for n in qm.plan.program.nodes]
    assert {"add", "avgpool", "flatten", "relu", "conv2d", "linear"} <= set(ops)
    assert qm.folded == {"stem.0": "stem.1"}
    x = torch.randn(32, 3, 8, 8)
    xi = enter(x, qm.plan.formats[qm.plan.program.input]).numpy()
    got = execute(integer_params(qm.plan), xi)
    fout = qm.plan.formats[qm.plan.program.output]
    with torch.no_grad():
        sim = FixedPointModule(qm.plan, "exact")(x)
        ref = model(x)
    assert np.array_equal(np.round(sim.double().numpy() / fout.scale).astype(np.int64), got)
    assert np.array_equal(compile_and_run(export_c(qm, tmp_path / "c"), xi, got.shape[1]), got)
    # and it still computes the float model, to within a few output steps
    err = np.abs(got * fout.scale - ref.numpy())
    assert err.max() < 8 * fout.scale


class Planted(nn.Module):
    """Positive weights on positive inputs: the second layer's sums outgrow 16 bits."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
        with torch.no_grad():
            for lin in (self.net[0], self.net[2]):
                lin.weight.uniform_(0.5, 1.0)
                lin.bias.zero_()

    def forward(self, x):
        return self.net(x)


def test_planted_16_bit_overflow_is_refused_or_saturated_visibly(tmp_path):
    torch.manual_seed(0)
    model = Planted().eval()
    calib = [(torch.rand(32, 16),)]
    with pytest.raises(UserError, match=r"16-bit accumulator in .*net\.2 \(needs \d+ bits"):
        quantize(model, get_recipe("fixed-point", accumulator=16), calib)
    qm = quantize(model, get_recipe("fixed-point", accumulator=16, on_overflow="saturate"), calib)
    assert qm.info["accumulator_overflow_possible"]
    p = integer_params(qm.plan)
    xi = enter(torch.rand(64, 16), qm.plan.formats[qm.plan.program.input]).numpy()
    got = execute(p, xi)
    stats = {k: v.to_dict(p.worst_bits[k]) for k, v in p.stats.items()}
    assert stats["net.2"]["accumulator_overflows"] > 0
    assert stats["net.2"]["accumulator_bits_worst_case"] > 16
    # the same saturating order in C gives the same numbers
    assert np.array_equal(compile_and_run(export_c(qm, tmp_path / "c"), xi, got.shape[1]), got)
    # the torch simulation does not emulate order-dependent saturation and says so
    with pytest.raises(UserError, match="saturate"):
        FixedPointModule(qm.plan, "exact")
    # with a 32-bit accumulator nothing overflows
    qm32 = quantize(model, "fixed-point", calib)
    p32 = integer_params(qm32.plan)
    execute(p32, xi)
    assert all(s.accumulator_overflows == 0 for s in p32.stats.values())


def test_unsupported_operator_is_named_before_any_calibration():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Sigmoid(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    calib = [(torch.randn(2, 1, 8, 8),), "not a batch: calibration must not start"]
    with pytest.raises(UnsupportedModel, match=r"layer '1' \(aten.sigmoid"):
        quantize(model, "fixed-point", calib)  # type: ignore[arg-type]


def test_recipe_refuses_impossible_combinations():
    with pytest.raises(UserError, match="16-bit accumulator"):
        get_recipe("fixed-point", bits=16, accumulator=16)
    with pytest.raises(UserError, match="on_overflow"):
        get_recipe("fixed-point", on_overflow="wrap")


class Separable(nn.Module):
    """A depthwise-separable CNN (as in MobileNet or a keyword-spotting DS-CNN): depthwise 3x3,
    pointwise 1x1, a grouped 3x3 (2 channels per group) with stride 2, global pooling, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(8, 16, 1), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=8), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x):
        return self.head(self.grouped(self.pw(self.dw(self.stem(x)))))


@pytest.mark.parametrize("pot", [False, True])
def test_depthwise_and_grouped_convolutions_run_integer_only_everywhere(pot, tmp_path):
    from quantwise.runtime.onnxrt import OrtRunner, export_onnx

    torch.manual_seed(0)
    model = Separable().eval()
    with torch.no_grad():
        for bn in (model.stem[1], model.dw[1]):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2)
    calib = [(torch.randn(16, 1, 16, 16),) for _ in range(4)]
    qm = quantize(model, get_recipe("fixed-point", pot_scales=pot), calib)
    convs = {n.layer: n.attrs["groups"] for n in qm.plan.program.heavy() if n.op == "conv2d"}
    assert convs == {"stem.0": 1, "dw.0": 8, "pw.0": 1, "grouped.0": 8}
    assert tuple(qm.plan.layers["dw.0"].weight.shape) == (8, 1, 3, 3)
    x = torch.randn(40, 1, 16, 16)  # 8x8 before global pooling: 1/64 is a power of two
    got, fout = _executor_simulation_and_c_agree(qm, model, x, tmp_path)
    # ONNX Runtime runs all four convolutions (depthwise included) and the Gemm as integer kernels
    path = export_onnx(FixedPointModule(qm.plan, "qdq"), (x[:2],), tmp_path / "m.onnx", ["x"], {"x": {0: "batch"}})
    ort = OrtRunner(path, ["x"])
    ours = np.round(ort.run((x,)) / fout.scale).astype(np.int64)
    census = ort.integer_ops()
    assert census["integer"] == census["total"] == 5, census
    assert np.abs(ours - got).max() <= (0 if pot else 1)


def test_grouped_convolution_saturates_in_the_same_order_as_c(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.Flatten(), nn.Linear(8 * 4 * 4, 3)).eval()
    with torch.no_grad():
        model[0].weight.uniform_(0.5, 1.0)
    calib = [(torch.rand(8, 4, 6, 6),)]
    qm = quantize(model, get_recipe("fixed-point", accumulator=16, on_overflow="saturate"), calib)
    p = integer_params(qm.plan)
    xi = enter(torch.rand(16, 4, 6, 6), qm.plan.formats[qm.plan.program.input]).numpy()
    got = execute(p, xi)
    assert p.stats["0"].accumulator_overflows > 0
    assert np.array_equal(compile_and_run(export_c(qm, tmp_path / "c"), xi, got.shape[1]), got)


def test_a_two_input_model_is_named_as_such():
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 2)

        def forward(self, x, mask):
            return self.lin(x * mask)

    calib = [(torch.randn(2, 4), torch.ones(2, 4))]
    with pytest.raises(UnsupportedModel, match="one input tensor; this one takes 2"):
        quantize(TwoInputs().eval(), "fixed-point", calib)


class SamePadConv(nn.Conv2d):
    """TensorFlow's "same" padding for a strided conv: one extra row and column of zeros after."""

    def forward(self, x):
        return super().forward(torch.nn.functional.pad(x, [0, 1, 0, 1]))


def test_zero_padding_before_a_strided_conv_is_an_integer_op_everywhere(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(SamePadConv(1, 8, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 3)).eval()
    calib = [(torch.randn(16, 1, 8, 8),) for _ in range(2)]
    qm = quantize(model, "fixed-point", calib)
    pads = [n for n in qm.plan.program.nodes if n.op == "pad"]
    assert len(pads) == 1 and pads[0].attrs["pad"] == [0, 1, 0, 1] and pads[0].attrs["shape"] == [1, 9, 9]
    # the padding kept (4x4 conv outputs, not 3x3): within 8 steps of the float model
    _executor_simulation_and_c_agree(qm, model, torch.randn(20, 1, 8, 8), tmp_path)


def test_padding_with_a_value_other_than_zero_is_refused():
    class Ones(nn.Module):
        def forward(self, x):
            return torch.nn.functional.pad(x, [1, 1, 1, 1], value=1.0)

    model = nn.Sequential(Ones(), nn.Conv2d(1, 2, 3), nn.Flatten()).eval()
    with pytest.raises(UnsupportedModel, match="padding other than zeros"):
        quantize(model, "fixed-point", [(torch.randn(2, 1, 6, 6),)])
