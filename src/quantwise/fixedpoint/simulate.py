"""The program in PyTorch: float (for calibration), exact integer simulation, and QDQ for ONNX.

* :func:`~quantwise.fixedpoint.floatops.float_forward` (float, for calibration) lives beside the graph.
* :class:`FixedPointModule` with ``mode="exact"`` reproduces the integer executor bit for bit:
  Conv2d/Linear accumulate in float64, which holds every integer sum below 2**53 exactly, and
  rescaling uses the same int64 multiply and rounding shift. With ``mode="qdq"`` it is the float
  QuantizeLinear/DequantizeLinear graph that ONNX Runtime fuses into integer kernels (QLinearConv,
  QGemm, int8 MaxPool ...); ONNX Runtime rescales in float32, so it can differ by one step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quantwise.errors import UnsupportedModel
from quantwise.fixedpoint.floatops import _act, _shape_op
from quantwise.fixedpoint.graph import Node
from quantwise.fixedpoint.plan import FixedPointPlan, TensorFormat
from quantwise.numerics.fixedpoint import requantize, rounding_shift
from quantwise.runtime.qfunctions import DQ, QDQ


def enter(x: torch.Tensor, f: TensorFormat) -> torch.Tensor:
    """Quantize a float model input to ``f`` (int64): the one float step, at the boundary.

    On a device without an FPU this happens before the model (a sensor or ADC gives integers).
    """
    return torch.round(x.to(torch.float64) / f.scale).clamp(f.qmin, f.qmax).to(torch.int64)


def why_not_simulate(plan: FixedPointPlan, mode: str) -> str | None:
    """Why ``plan`` cannot be simulated faithfully in ``mode`` (``exact`` or ``qdq``), or None."""
    if mode == "qdq":
        wide = sorted({f.qtype for f in plan.formats.values() if f.bits != 8})
        if wide or any(lp.weight.abs().max() > 127 for lp in plan.layers.values()):
            return "ONNX Runtime has no integer kernels for 16-bit fixed point: use --runtime integer (or torch)"
        return None
    over = [n for n, lp in plan.layers.items() if lp.worst_bits > plan.accumulator]
    if over:
        return (
            f"layers {', '.join(over)} can saturate the {plan.accumulator}-bit accumulator, which depends on "
            "the order of accumulation: only the integer runtime (and the C export) emulate it; use --runtime integer"
        )
    return None


class FixedPointModule(nn.Module):
    """A fixed-point model in PyTorch: float in, dequantized float out.

    Args:
        plan: the plan of a fixed-point QuantizedModel.
        mode: ``exact`` (integer arithmetic, bit-exact with the integer executor) or ``qdq``
            (float QDQ graph for export to ONNX; 8-bit tensors only).
    """

    def __init__(self, plan: FixedPointPlan, mode: str = "exact") -> None:
        super().__init__()
        reason = why_not_simulate(plan, mode)
        if reason:
            raise UnsupportedModel(reason)
        self.plan, self.mode = plan, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plan = self.plan
        fin = plan.formats[plan.program.input]
        env = {
            plan.program.input: QDQ.apply(x, fin.scale, 0, fin.signed, fin.bits)
            if self.mode == "qdq"
            else enter(x, fin)
        }
        for n in plan.program.nodes:
            xs = [env[i] for i in n.inputs]
            if self.mode == "exact":
                env[n.output] = self._exact(n, xs)
            else:
                env[n.output] = self._qdq(n, xs)
        fout = plan.formats[plan.program.output]
        y = env[plan.program.output]
        return (y.to(torch.float64) * fout.scale).to(torch.float32) if self.mode == "exact" else y

    def _qdq(self, n: Node, xs: list[torch.Tensor]) -> torch.Tensor:
        f = self.plan.formats[n.output]
        if n.op in ("conv2d", "linear"):
            lp = self.plan.layers[n.layer]
            s_in = self.plan.formats[n.inputs[0]].scale
            s_w = lp.weight_scale.to(torch.float32)
            w = DQ.apply(lp.weight.to(torch.int8), s_w, torch.zeros_like(s_w, dtype=torch.int8), 0)
            b = DQ.apply(
                lp.bias.to(torch.int32),
                (s_in * s_w.to(torch.float64)).to(torch.float32),
                torch.zeros_like(lp.bias, dtype=torch.int32),
                0,
            )
            if n.op == "conv2d":
                y = F.conv2d(xs[0], w, b, n.attrs["stride"], n.attrs["padding"], groups=n.attrs.get("groups", 1))
            else:
                y = F.linear(xs[0], w, b)
            y = _act(y, n.attrs.get("act"))
        else:
            y = _shape_op(n, xs)
        return QDQ.apply(y, f.scale, 0, f.signed, f.bits)

    def _exact(self, n: Node, xs: list[torch.Tensor]) -> torch.Tensor:
        a = n.attrs
        if n.op in ("conv2d", "linear"):
            lp = self.plan.layers[n.layer]
            x = xs[0].to(torch.float64)
            w = lp.weight.to(torch.float64)
            if n.op == "conv2d":
                acc = F.conv2d(x, w, None, a["stride"], a["padding"], groups=a.get("groups", 1))
                b, m, r = (t.reshape(1, -1, 1, 1) for t in (lp.bias, lp.multiplier, lp.shift))
            else:
                acc = F.linear(x, w)
                b, m, r = (t.reshape(1, -1) for t in (lp.bias, lp.multiplier, lp.shift))
            acc = acc.to(torch.int64) + b
            return requantize(acc, m, r, a["clip"][0], a["clip"][1])[0]
        if n.op in ("relu", "relu6"):
            return xs[0].clamp(a["clip"][0], a["clip"][1])
        if n.op == "maxpool":
            return F.max_pool2d(xs[0].to(torch.float64), a["kernel"], a["stride"], a["padding"]).to(torch.int64)
        if n.op == "avgpool":
            s = F.avg_pool2d(xs[0].to(torch.float64), a["kernel"], a["stride"], divisor_override=1).to(torch.int64)
            return rounding_shift(s * a["multiplier"], a["shift"])
        if n.op == "add":
            ya = rounding_shift(xs[0] * a["multiplier"][0], a["shift"][0])
            yb = rounding_shift(xs[1] * a["multiplier"][1], a["shift"][1])
            return (ya + yb).clamp(a["clip"][0], a["clip"][1])
        if n.op == "pad":
            return F.pad(xs[0], a["pad"])
        return xs[0].reshape(xs[0].shape[0], *a["shape"])
