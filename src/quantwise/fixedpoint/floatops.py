"""The program's operators in float: calibration runs the float model op by op through these."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from quantwise.fixedpoint.graph import Node, Program


def _act(y: torch.Tensor, act: str | None) -> torch.Tensor:
    if act == "relu":
        return torch.relu(y)
    if act == "relu6":
        return y.clamp(0, 6)
    return y


def _float_op(n: Node, model: nn.Module, xs: list[torch.Tensor]) -> torch.Tensor:
    x = xs[0]
    a = n.attrs
    if n.op == "conv2d":
        m = model.get_submodule(n.layer)
        return _act(F.conv2d(x, m.weight, m.bias, a["stride"], a["padding"], groups=a.get("groups", 1)), a.get("act"))
    if n.op == "linear":
        m = model.get_submodule(n.layer)
        return _act(F.linear(x, m.weight, m.bias), a.get("act"))
    return _shape_op(n, xs)


def _shape_op(n: Node, xs: list[torch.Tensor]) -> torch.Tensor:
    """Operators that need no rescaling (same scale in and out), in float."""
    x, a = xs[0], n.attrs
    if n.op == "relu":
        return torch.relu(x)
    if n.op == "relu6":
        return x.clamp(0, 6)
    if n.op == "maxpool":
        return F.max_pool2d(x, a["kernel"], a["stride"], a["padding"])
    if n.op == "avgpool":
        return F.avg_pool2d(x, a["kernel"], a["stride"])
    if n.op == "add":
        return xs[0] + xs[1]
    if n.op in ("flatten", "reshape"):
        return x.reshape(x.shape[0], *a["shape"])
    if n.op == "pad":
        return F.pad(x, a["pad"])
    raise ValueError(f"unknown op {n.op}")


def float_forward(
    prog: Program, model: nn.Module, x: torch.Tensor, seen: Callable[[str, torch.Tensor], None]
) -> torch.Tensor:
    """Run the float model through ``prog``, calling ``seen(name, tensor)`` on the input and every output."""
    env = {prog.input: x}
    seen(prog.input, x)
    for n in prog.nodes:
        env[n.output] = _float_op(n, model, [env[i] for i in n.inputs])
        seen(n.output, env[n.output])
    return env[prog.output]
