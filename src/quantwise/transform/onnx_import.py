"""An ONNX graph imported into PyTorch, for the formats only the PyTorch route builds.

The ONNX route quantizes a graph directly and runs it in ONNX Runtime. The integer executor,
generated C and quantwise's own ``.tflite`` start from a PyTorch module, so for those formats
the graph's scored output is rebuilt from real ``nn.Conv2d``/``nn.Linear`` layers (weights
copied from the initializers) and small modules for the rest. The import is used only when it
is exact: :func:`import_graph` runs ONNX Runtime and the module on the same batch and refuses,
with the difference, when they disagree by more than ``PARITY_RTOL`` of the output's range.

Operators outside :data:`OPS` are refused in one line naming the node, never approximated.
BatchNormalization after a Conv that nothing else reads is folded into it (as every exporter
does); asymmetric padding (TensorFlow's "same" with stride 2) becomes an explicit zero pad.
onnx2torch would be the library for this, but it imports torchvision at import time, which does
not install beside this project's PyTorch.
"""

from __future__ import annotations

import re
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from quantwise.errors import UnsupportedModel
from quantwise.onnxmodel import OnnxGraphModule

PARITY_RTOL = 1e-5
ELEMENTWISE = {"Relu": nn.ReLU, "Sigmoid": nn.Sigmoid, "Tanh": nn.Tanh, "HardSwish": nn.Hardswish}
PASS = ("Identity", "Dropout")
OPS = (
    "Conv", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "BatchNormalization", "Clip", "LeakyRelu",
    "MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean", "Flatten", "Reshape", "Squeeze",
    "Unsqueeze", "Transpose", "Concat", "Softmax", *ELEMENTWISE, *PASS,
)  # fmt: skip


class Reshape(nn.Module):
    def __init__(self, shape: list[int]) -> None:
        super().__init__()
        self.shape = shape  # without the batch dimension

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


class Permute(nn.Module):
    def __init__(self, perm: list[int]) -> None:
        super().__init__()
        self.perm = perm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.perm)


class Pad(nn.Module):
    """Zero padding of the two spatial dimensions (``pad``: left, right, top, bottom)."""

    def __init__(self, pad: list[int]) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pad)


class Binary(nn.Module):
    """``x op y``; ``const`` (a buffer) stands for a constant operand, on the side ``const_first`` says."""

    def __init__(self, op: str, const: torch.Tensor | None = None, const_first: bool = False) -> None:
        super().__init__()
        self.op, self.const_first = op, const_first
        self.register_buffer("const", const)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        const = cast("torch.Tensor | None", self.const)  # a registered buffer
        a, b = (x, y) if const is None else ((const, x) if self.const_first else (x, const))
        assert b is not None
        if self.op == "Add":
            return a + b
        if self.op == "Sub":
            return a - b
        return a * b if self.op == "Mul" else a / b


class Concat(nn.Module):
    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=self.axis)


class ImportedGraph(nn.Module):
    """The graph's scored output as PyTorch layers (named after the graph's nodes), run in the
    graph's order; ``wiring`` says which tensors each layer reads and writes."""

    def __init__(self, inputs: list[str], output: str, steps: list[tuple[str, nn.Module, list[str], str]]) -> None:
        super().__init__()
        self.input_names, self.output_name = inputs, output
        self.wiring = [(name, ins, out) for name, _, ins, out in steps]
        for name, module, _, _ in steps:
            self.add_module(name, module)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        env = dict(zip(self.input_names, xs))
        for name, ins, out in self.wiring:
            env[out] = getattr(self, name)(*[env[i] for i in ins])
        return env[self.output_name]


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _module_names(nodes: list[Any]) -> dict[str, str]:
    """Python-identifier names for nodes, their exporter's common path prefix dropped."""
    names = [n.name or f"{n.op_type}_{i}" for i, n in enumerate(nodes)]
    paths = [n.split("/") for n in names if "/" in n]
    common = 0
    while len(paths) > 1 and all(len(p) > common + 1 and p[common] == paths[0][common] for p in paths):
        common += 1
    out: dict[str, str] = {}
    for n in names:
        p = n.split("/")
        base = re.sub(r"\W", "_", "_".join(p[common:] if "/" in n else p)).strip("_") or "node"
        base = f"n_{base}" if base[0].isdigit() else base
        name, k = base, 1
        while name in out.values():
            k += 1
            name = f"{base}_{k}"
        out[n] = name
    return out


class _Importer:
    def __init__(self, gm: OnnxGraphModule) -> None:
        import onnx
        from onnx import numpy_helper

        self.gm = gm
        inferred = onnx.shape_inference.infer_shapes(gm.proto)
        self.shapes: dict[str, list[int]] = {}
        for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
            self.shapes[vi.name] = [
                d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim
            ]
        self.consts = {t.name: numpy_helper.to_array(t) for t in gm.proto.graph.initializer}
        self.readers: dict[str, int] = {}
        for n in gm.proto.graph.node:
            for i in n.input:
                self.readers[i] = self.readers.get(i, 0) + 1
        self.alias: dict[str, str] = {}

    def const(self, name: str) -> torch.Tensor:
        return torch.from_numpy(np.array(self.consts[name], dtype=np.float32))

    def needed(self, output: str) -> list[Any]:
        """The nodes the scored output depends on, in graph order."""
        by_out = {o: n for n in self.gm.proto.graph.node for o in n.output}
        want, stack = set(), [output]
        while stack:
            t = stack.pop()
            n = by_out.get(t)
            if n is not None and id(n) not in want:
                want.add(id(n))
                stack += [i for i in n.input if i]
        return [n for n in self.gm.proto.graph.node if id(n) in want]

    def run(self) -> ImportedGraph:
        out = self.gm.output_names[self.gm.scored or 0]
        nodes = self.needed(out)
        bad = [n for n in nodes if n.op_type not in OPS]
        if bad:
            raise UnsupportedModel(
                f"node {bad[0].name!r} ({bad[0].op_type}) cannot be imported into PyTorch, which this format needs: "
                f"the import takes {', '.join(sorted(set(OPS)))}"
            )
        names = _module_names(nodes)
        steps: list[tuple[str, nn.Module, list[str], str]] = []
        skip: set[str] = set()
        for n in nodes:
            if n.name in skip:
                continue
            ins = [self.alias.get(i, i) for i in n.input if i]
            if n.op_type in PASS:
                self.alias[n.output[0]] = ins[0]
                continue
            made = self.convert(n, ins, nodes, skip)
            for k, (fn, inputs, output) in enumerate(made):
                steps.append((names[n.name] + ("_pad" if k == 0 and len(made) > 1 else ""), fn, inputs, output))
        return ImportedGraph(self.gm.input_names, self.alias.get(out, out), steps)

    def refuse(self, n: Any, why: str) -> UnsupportedModel:
        return UnsupportedModel(f"node {n.name!r} ({n.op_type}) cannot be imported into PyTorch exactly: {why}")

    def only_reader(self, t: str, nodes: list[Any], op: str) -> Any | None:
        if self.readers.get(t) != 1 or t in self.gm.output_names:
            return None
        return next((m for m in nodes if t in m.input and m.op_type == op), None)

    def convert(self, n: Any, ins: list[str], nodes: list[Any], skip: set[str]) -> list[tuple[Any, list[str], str]]:
        a, op, out = _attrs(n), n.op_type, n.output[0]
        if op == "Conv":
            return self.conv(n, a, ins, nodes, skip)
        if op in ("Gemm", "MatMul"):
            return [self.linear(n, a, ins, nodes, skip)]
        if op in ELEMENTWISE:
            return [(ELEMENTWISE[op](), ins[:1], out)]
        if op == "LeakyRelu":
            return [(nn.LeakyReLU(float(a.get("alpha", 0.01))), ins[:1], out)]
        if op == "Clip":
            lo = float(self.consts[ins[1]]) if len(ins) > 1 and ins[1] in self.consts else float(a.get("min", -np.inf))
            hi = float(self.consts[ins[2]]) if len(ins) > 2 and ins[2] in self.consts else float(a.get("max", np.inf))
            fn: nn.Module = (
                nn.ReLU6()
                if (lo, hi) == (0.0, 6.0)
                else nn.ReLU()
                if (lo, hi) == (0.0, np.inf)
                else nn.Hardtanh(lo, hi)
            )
            return [(fn, ins[:1], out)]
        if op in ("Add", "Sub", "Mul", "Div"):
            const = [i for i in ins if i in self.consts]
            if not const:
                return [(Binary(op), ins, out)]
            other = [i for i in ins if i not in self.consts]
            if len(other) != 1:
                raise self.refuse(n, "both operands are constants")
            return [(Binary(op, self.const(const[0]), ins[0] == const[0]), other, out)]
        if op == "BatchNormalization":
            c = [self.const(i) for i in ins[1:5]]
            bn = nn.BatchNorm2d(len(c[0]), eps=float(a.get("epsilon", 1e-5))).eval()
            with torch.no_grad():
                for t, v in zip((bn.weight, bn.bias, bn.running_mean, bn.running_var), c):
                    cast(torch.Tensor, t).copy_(v)
            return [(bn, ins[:1], out)]
        if op in ("MaxPool", "AveragePool"):
            k = list(a["kernel_shape"])
            pads = self.pads(n, a, ins[0], k, list(a.get("strides", [1, 1])), list(a.get("dilations", [1, 1])))
            if pads[:2] != pads[2:]:
                raise self.refuse(n, "asymmetric pooling padding")
            if list(a.get("dilations", [1, 1])) != [1, 1] or len(k) != 2:
                raise self.refuse(n, "only 2-D pooling without dilation")
            kk, st, pp = (k[0], k[1]), tuple(int(v) for v in a.get("strides", k)), (pads[0], pads[1])
            ceil = bool(a.get("ceil_mode", 0))
            if op == "MaxPool":
                return [(nn.MaxPool2d(kk, st, pp, ceil_mode=ceil), ins[:1], out)]
            avg = nn.AvgPool2d(kk, (st[0], st[1]), pp, ceil, bool(a.get("count_include_pad", 0)))
            return [(avg, ins[:1], out)]
        if op == "GlobalAveragePool" or op == "ReduceMean":
            axes = list(a.get("axes", self.consts[ins[1]] if len(ins) > 1 else []))
            if op == "ReduceMean" and sorted(int(x) % 4 for x in axes) != [2, 3]:
                raise self.refuse(n, "ReduceMean other than over the two spatial axes of NCHW")
            pool = nn.AdaptiveAvgPool2d(1)
            if op == "ReduceMean" and not a.get("keepdims", 1):
                return [(nn.Sequential(pool, nn.Flatten()), ins[:1], out)]
            return [(pool, ins[:1], out)]
        if op in ("Flatten", "Reshape", "Squeeze", "Unsqueeze"):
            shape = self.shapes.get(out, [])
            if op == "Flatten" and int(a.get("axis", 1)) != 1:
                raise self.refuse(n, "Flatten with an axis other than 1")
            if not shape or any(d < 0 for d in shape[1:]):
                raise self.refuse(n, "its output shape is not static apart from the batch")
            return [(Reshape(shape[1:]), ins[:1], out)]
        if op == "Transpose":
            perm = [int(p) for p in a["perm"]]
            if perm[0] != 0:
                raise self.refuse(n, "a transpose that moves the batch dimension")
            return [(Permute(perm), ins[:1], out)]
        if op == "Concat":
            return [(Concat(int(a["axis"])), ins, out)]
        return [(nn.Softmax(dim=int(a.get("axis", -1))), ins[:1], out)]  # Softmax

    def pads(self, n: Any, a: dict[str, Any], x: str, k: list[int], s: list[int], d: list[int]) -> list[int]:
        """``[top, left, bottom, right]`` from ``pads`` or ``auto_pad`` (input shape needed)."""
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto in ("NOTSET", "VALID"):
            p = [int(v) for v in a.get("pads", [0] * 4)] if auto == "NOTSET" else [0] * 4
            return p
        hw = self.shapes.get(x, [])[2:]
        if len(hw) != 2 or min(hw) < 1:
            raise self.refuse(n, f"auto_pad {auto} on an input whose size is not static")
        total = [max((-(-h // st) - 1) * st + (kk - 1) * dd + 1 - h, 0) for h, st, kk, dd in zip(hw, s, k, d)]
        small = [t // 2 for t in total]
        big = [t - t // 2 for t in total]
        return [*small, *big] if auto == "SAME_UPPER" else [*big, *small]

    def conv(self, n: Any, a: dict[str, Any], ins: list[str], nodes: list[Any], skip: set[str]) -> list[Any]:
        if ins[1] not in self.consts or len(self.consts[ins[1]].shape) != 4:
            raise self.refuse(n, "only 2-D convolutions with a stored weight")
        w = self.const(ins[1])
        k, s, d = list(w.shape[2:]), list(a.get("strides", [1, 1])), list(a.get("dilations", [1, 1]))
        pads = self.pads(n, a, ins[0], k, s, d)
        groups = int(a.get("group", 1))
        sym = pads[:2] == pads[2:]
        conv = nn.Conv2d(
            w.shape[1] * groups,
            w.shape[0],
            (k[0], k[1]),
            (s[0], s[1]),
            (pads[0], pads[1]) if sym else 0,
            (d[0], d[1]),
            groups,
        )
        bias = self.const(ins[2]) if len(ins) > 2 else torch.zeros(w.shape[0])
        out = n.output[0]
        bn = self.only_reader(out, nodes, "BatchNormalization")
        if bn is not None:  # folded, as every exporter folds it
            g, b, mean, var = (self.const(i) for i in bn.input[1:5])
            scale = g / torch.sqrt(var + float(_attrs(bn).get("epsilon", 1e-5)))
            w, bias = w * scale.reshape(-1, 1, 1, 1), (bias - mean) * scale + b
            skip.add(bn.name)
            out = bn.output[0]
        with torch.no_grad():
            conv.weight.copy_(w)
            cast(torch.Tensor, conv.bias).copy_(bias)  # built with a bias
        if pads[:2] == pads[2:]:
            return [(conv, ins[:1], out)]
        padded = f"{n.output[0]}__padded"
        return [(Pad([pads[1], pads[3], pads[0], pads[2]]), ins[:1], padded), (conv, [padded], out)]

    def linear(self, n: Any, a: dict[str, Any], ins: list[str], nodes: list[Any], skip: set[str]) -> Any:
        if ins[1] not in self.consts or self.consts[ins[1]].ndim != 2 or ins[0] in self.consts:
            raise self.refuse(n, "only a product of an input with a stored 2-D weight")
        w, out = self.const(ins[1]), n.output[0]
        if n.op_type == "Gemm":
            if a.get("transA", 0):
                raise self.refuse(n, "transA")
            w = (w if a.get("transB", 0) else w.T) * float(a.get("alpha", 1.0))
            bias = self.const(ins[2]) * float(a.get("beta", 1.0)) if len(ins) > 2 else None
        else:
            w, bias = w.T, None
            add = self.only_reader(out, nodes, "Add")
            other = [i for i in add.input if i != out] if add is not None else []
            if add is not None and other[0] in self.consts and self.consts[other[0]].size == w.shape[0]:
                bias, out = self.const(other[0]), add.output[0]
                skip.add(add.name)
        if bias is not None and bias.numel() != w.shape[0]:
            raise self.refuse(n, f"a bias of shape {tuple(bias.shape)} for {w.shape[0]} outputs")
        lin = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
        with torch.no_grad():
            lin.weight.copy_(w)
            if bias is not None:
                lin.bias.copy_(bias.reshape(-1))
        return lin, ins[:1], out


def import_graph(gm: Any, batch: tuple[torch.Tensor, ...]) -> ImportedGraph:
    """``gm``'s scored output as a PyTorch module, checked against ONNX Runtime on ``batch``.

    Raises:
        UnsupportedModel: an operator the import does not take, or a module that differs from
            ONNX Runtime by more than ``PARITY_RTOL`` of the output range (the difference named).
    """
    module = _Importer(gm).run().eval()
    with torch.no_grad():
        ref, ours = gm(*batch), module(*batch)
    if ours.shape != ref.shape:
        raise UnsupportedModel(
            f"the graph imported into PyTorch returns {tuple(ours.shape)}, ONNX Runtime {tuple(ref.shape)}"
        )
    diff = float((ours - ref).abs().max())
    bound = PARITY_RTOL * max(float(ref.abs().max()), 1.0)
    if not diff <= bound:
        raise UnsupportedModel(
            f"the graph imported into PyTorch differs from ONNX Runtime by {diff:.3g} (bound {bound:.3g}) "
            "on the first calibration batch: this format is not built from an inexact import"
        )
    setattr(module, "import_max_abs_diff", diff)  # noqa: B010  (read by tasks.imported)
    return module
