"""The model as a flat program of integer-executable operators, captured with ``torch.export``.

A :class:`Program` is a list of :class:`Node` in execution order, each reading named tensors
and writing one. It is what the integer executor, the PyTorch simulation, the ONNX lowering
and the C export all walk, so they compute the same thing by construction. Capture refuses an
operator the integer executor cannot run, naming it and its layer, before any work starts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from quantwise.errors import UnsupportedModel

SUPPORTED = ("conv2d", "linear", "relu", "relu6", "maxpool", "avgpool", "add", "flatten", "reshape", "pad")
HEAVY = ("conv2d", "linear")


@dataclass
class Node:
    """One operator.

    Attributes:
        op: one of :data:`SUPPORTED`.
        inputs: names of the tensors it reads.
        output: name of the tensor it writes.
        layer: module name of a Conv2d/Linear (its weights), else the module the op came from.
        attrs: operator attributes (stride, padding, kernel ...) and ``shape``, the output
            shape without the batch dimension; ``act`` on conv2d/linear is a fused activation;
            ``groups`` on conv2d splits channels as ``nn.Conv2d`` does (depthwise: one per channel);
            ``pad`` on pad is ``[left, right, top, bottom]`` zeros around the two spatial dimensions
            (TensorFlow's asymmetric "same" padding before a strided conv, for instance).
    """

    op: str
    inputs: list[str]
    output: str
    layer: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Program:
    input: str
    input_shape: list[int]  # without the batch dimension
    output: str
    nodes: list[Node]

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "input_shape": self.input_shape,
            "output": self.output,
            "nodes": [asdict(n) for n in self.nodes],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Program:
        return cls(d["input"], list(d["input_shape"]), d["output"], [Node(**n) for n in d["nodes"]])

    def heavy(self) -> list[Node]:
        """The Conv2d/Linear nodes, in order."""
        return [n for n in self.nodes if n.op in HEAVY]


def _pair(v: Any) -> list[int]:
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return [int(x) for x in (v * 2 if len(v) == 1 else v)]


def _arg(args: tuple, kwargs: dict, i: int, name: str, default: Any) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


def capture(model: nn.Module, example: torch.Tensor) -> Program:
    """Trace ``model`` (one tensor in, one out) into a :class:`Program`, fusing ReLU/ReLU6 into
    the Conv2d/Linear before them when nothing else reads the layer's raw output.

    Raises:
        UnsupportedModel: an operator or pattern the integer executor cannot run, with its layer.
    """
    try:
        ep = torch.export.export(model.eval(), (example,))
    except Exception as e:
        raise UnsupportedModel(
            f"the integer executor needs a model torch.export can capture: {type(e).__name__}: {str(e).splitlines()[0]}"
        ) from None
    params = ep.graph_signature.inputs_to_parameters
    user_inputs = [
        n
        for n in ep.graph.nodes
        if n.op == "placeholder" and n.name not in params and n.name not in ep.graph_signature.inputs_to_buffers
    ]
    if len(user_inputs) != 1:
        raise UnsupportedModel(
            f"the integer executor runs models with one input tensor; this one takes {len(user_inputs)}"
        )
    alias: dict[str, str] = {}
    nodes: list[Node] = []
    output = ""
    for n in ep.graph.nodes:
        if n.op == "output":
            outs = n.args[0]
            if len(outs) != 1:
                raise UnsupportedModel(
                    f"the integer executor runs models with one output tensor; this one returns {len(outs)}"
                )
            output = alias.get(outs[0].name, outs[0].name)
        elif n.op == "call_function":
            node = _convert(n, params, alias)
            if node is not None:
                nodes.append(node)
    prog = Program(user_inputs[0].name, list(example.shape[1:]), output, nodes)
    return _fuse_activations(prog)


def _module_of(n: torch.fx.Node) -> str:
    stack = n.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def _convert(n: torch.fx.Node, params: dict[str, str], alias: dict[str, str]) -> Node | None:
    t = str(n.target)
    a, kw = n.args, n.kwargs
    src = alias.get(a[0].name, a[0].name) if a and isinstance(a[0], torch.fx.Node) else ""
    shape = list(n.meta["val"].shape[1:]) if "val" in n.meta and hasattr(n.meta["val"], "shape") else []
    where = _module_of(n) or n.name

    def refuse(why: str) -> UnsupportedModel:
        return UnsupportedModel(f"layer {where!r} ({t}): {why}; the integer executor runs {', '.join(SUPPORTED)}")

    if t in (
        "aten.clone.default",
        "aten.contiguous.default",
        "aten.dropout.default",
        "aten.alias.default",
        "aten.detach.default",
    ):
        alias[n.name] = src
        return None
    if t == "aten.conv2d.default":
        if _pair(_arg(a, kw, 5, "dilation", 1)) != [1, 1]:
            raise refuse("dilated convolutions are not supported")
        layer = params[a[1].name].rsplit(".", 1)[0]
        attrs = {
            "stride": _pair(_arg(a, kw, 3, "stride", 1)),
            "padding": _pair(_arg(a, kw, 4, "padding", 0)),
            "kernel": list(a[1].meta["val"].shape[2:]),
            "groups": int(_arg(a, kw, 6, "groups", 1)),
        }
        return Node("conv2d", [src], n.name, layer, {**attrs, "shape": shape})
    if t == "aten.linear.default":
        if len(n.meta["val"].shape) != 2:
            raise refuse("Linear on inputs of rank other than 2 (batch, features) is not supported")
        return Node("linear", [src], n.name, params[a[1].name].rsplit(".", 1)[0], {"shape": shape})
    if t in ("aten.relu.default", "aten.relu_.default"):
        return Node("relu", [src], n.name, where, {"shape": shape})
    if t in ("aten.hardtanh.default", "aten.hardtanh_.default"):
        if (float(_arg(a, kw, 1, "min_val", -1.0)), float(_arg(a, kw, 2, "max_val", 1.0))) != (0.0, 6.0):
            raise refuse("hardtanh other than ReLU6 (0, 6)")
        return Node("relu6", [src], n.name, where, {"shape": shape})
    if t == "aten.max_pool2d.default":
        k = _pair(a[1])
        stride = _pair(_arg(a, kw, 2, "stride", []) or k)
        if _arg(a, kw, 5, "ceil_mode", False) or _pair(_arg(a, kw, 4, "dilation", 1)) != [1, 1]:
            raise refuse("max pooling with ceil_mode or dilation")
        return Node(
            "maxpool",
            [src],
            n.name,
            where,
            {"kernel": k, "stride": stride, "padding": _pair(_arg(a, kw, 3, "padding", 0)), "shape": shape},
        )
    if t == "aten.avg_pool2d.default":
        k = _pair(a[1])
        stride = _pair(_arg(a, kw, 2, "stride", []) or k)
        if (
            _pair(_arg(a, kw, 3, "padding", 0)) != [0, 0]
            or _arg(a, kw, 4, "ceil_mode", False)
            or _arg(a, kw, 6, "divisor_override", None)
        ):
            raise refuse("average pooling with padding, ceil_mode or a divisor override")
        return Node("avgpool", [src], n.name, where, {"kernel": k, "stride": stride, "shape": shape})
    if t == "aten.adaptive_avg_pool2d.default":
        in_shape = list(a[0].meta["val"].shape[2:])
        if _pair(a[1]) != [1, 1]:
            raise refuse("adaptive average pooling to a size other than 1x1")
        return Node("avgpool", [src], n.name, where, {"kernel": in_shape, "stride": in_shape, "shape": shape})
    if t in ("aten.add.Tensor", "aten.add_.Tensor"):
        if len(a) < 2 or not isinstance(a[1], torch.fx.Node) or kw.get("alpha", 1) != 1:
            raise refuse("add of a constant or with alpha (only tensor + tensor, as in a residual)")
        if list(a[0].meta["val"].shape) != list(a[1].meta["val"].shape):
            raise refuse("add with broadcasting")
        return Node("add", [src, alias.get(a[1].name, a[1].name)], n.name, where, {"shape": shape})
    if t in ("aten.pad.default", "aten.constant_pad_nd.default"):
        pad = [int(p) for p in a[1]]
        mode = _arg(a, kw, 2, "mode", "constant") if t == "aten.pad.default" else "constant"
        value = _arg(a, kw, 3 if t == "aten.pad.default" else 2, "value", 0.0)
        if len(n.meta["val"].shape) != 4 or len(pad) not in (2, 4) or mode != "constant" or (value or 0.0) != 0.0:
            raise refuse("padding other than zeros around the spatial dimensions of an NCHW tensor")
        if min(pad) < 0:
            raise refuse("negative padding (cropping)")
        return Node("pad", [src], n.name, where, {"pad": (pad + [0, 0])[:4], "shape": shape})
    if t == "aten.flatten.using_ints":
        if _arg(a, kw, 1, "start_dim", 0) != 1 or _arg(a, kw, 2, "end_dim", -1) not in (-1, len(n.meta["val"].shape)):
            raise refuse("flatten other than flatten(x, 1)")
        return Node("flatten", [src], n.name, where, {"shape": shape})
    if t in ("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default"):
        return Node("reshape", [src], n.name, where, {"shape": shape})
    raise refuse("this operator is not supported")


def _fuse_activations(prog: Program) -> Program:
    """Fold a ReLU/ReLU6 into the Conv2d/Linear before it when it is that output's only reader."""
    readers: dict[str, int] = {}
    for n in prog.nodes:
        for i in n.inputs:
            readers[i] = readers.get(i, 0) + 1
    by_output = {n.output: n for n in prog.nodes}
    kept: list[Node] = []
    rename: dict[str, str] = {}
    for n in prog.nodes:
        n.inputs = [rename.get(i, i) for i in n.inputs]
        src = by_output.get(n.inputs[0]) if n.inputs else None
        if (
            n.op in ("relu", "relu6")
            and src is not None
            and src.op in HEAVY
            and "act" not in src.attrs
            and readers.get(src.output) == 1
            and src.output != prog.output
        ):
            src.attrs["act"] = n.op
            rename[n.output] = src.output
            continue
        kept.append(n)
    prog.nodes = kept
    prog.output = rename.get(prog.output, prog.output)
    return prog
