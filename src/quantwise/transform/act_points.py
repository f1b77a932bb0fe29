"""Tensors quantized between layers, found by dataflow: residual adds and max-pools.

A runtime runs a residual add in int8 (ONNX Runtime's ``QLinearAdd``) only when both its inputs
and its output are quantized, and a max-pool in int8 when its input and output share one grid.
A static QuantizedModel quantizes each layer's input and output; this module finds, on a
``torch.fx`` trace of the float model (BatchNorm folded), what lies between them:

- *quantized tensors*: each static layer's output (after its fused activation), and what passes
  such a tensor on without leaving its grid (``nn.Identity``, dropout, flatten/reshape/view,
  transpose/permute, chunk/split and their pieces, ReLU: 0 is on every grid);
- a *max-pool* of a quantized tensor: a point on its input's grid (a max of grid values is one);
- an *add* of two quantized tensors, or a *concatenation* of quantized tensors: a point after it
  (or after the ReLU that is its only user), with its own calibrated range;
- each static layer that reads a quantized tensor takes that tensor's scale and zero point as its
  input quantization: one tensor, one grid (as ONNX Runtime's QDQ quantizer does), so nothing is
  requantized between a producer and its consumers.

Points are keyed by fx node name. Every lowering traces the same float model again (the names are
deterministic) and inserts ``quantize -> dequantize`` there with :func:`insert_points`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from quantwise.errors import Unsupported
from quantwise.quantized import ActQuant
from quantwise.transform.fusion import activation_kind, trace_graph

_ATEN = torch.ops.aten
_PASS_MODULES = (nn.Identity, nn.Dropout, nn.Flatten)
_PASS_FUNCTIONS = {
    torch.flatten,
    torch.reshape,
    torch.relu,
    F.relu,
    F.dropout,
    torch.transpose,
    torch.permute,
    torch.chunk,
    torch.split,
    operator.getitem,  # one piece of a chunk/split of a quantized tensor
    # the same, as a torch.export program's ATen calls (a captured model)
    _ATEN.relu.default,
    _ATEN.view.default,
    _ATEN.reshape.default,
    _ATEN.flatten.using_ints,
    _ATEN.permute.default,
    _ATEN.transpose.int,
    _ATEN.contiguous.default,
    _ATEN.dropout.default,
    _ATEN.chunk.default,
    _ATEN.split.Tensor,
    _ATEN.split_with_sizes.default,
}
_PASS_METHODS = {"flatten", "view", "reshape", "contiguous", "relu", "transpose", "permute", "chunk", "split"}
_POOL_FUNCTIONS = {F.max_pool2d, torch.max_pool2d, _ATEN.max_pool2d.default}
_ADDS = {operator.add, operator.iadd, torch.add, _ATEN.add.Tensor}
_ADD_METHODS = {"add", "add_"}
_CATS = {torch.cat, torch.concat, _ATEN.cat.default}


@dataclass
class PointPlan:
    """Where the float model gets quantized tensors beyond its layers' own quantizers.

    Attributes:
        gm: the traced float model (its modules are the model's own).
        calibrate: add and concatenation points, whose range is observed.
        concats: which of them are concatenations.
        inherit: max-pool points -> the source whose grid they keep (``layer:<name>`` / ``point:<node>``).
        inputs: static layer -> the source of the tensor it reads.
    """

    gm: torch.fx.GraphModule
    calibrate: list[str] = field(default_factory=list)
    concats: list[str] = field(default_factory=list)
    inherit: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)


def _is_add(n: torch.fx.Node) -> bool:
    if n.kwargs or len(n.args) != 2 or not all(isinstance(a, torch.fx.Node) for a in n.args):
        return False
    return (n.op == "call_function" and n.target in _ADDS) or (n.op == "call_method" and n.target in _ADD_METHODS)


def _is_cat(n: torch.fx.Node) -> bool:
    """A concatenation of a list of traced tensors (a point, with its own grid: ``QLinearConcat``)."""
    parts = n.args[0] if n.args else None
    return (
        n.op == "call_function"
        and n.target in _CATS
        and isinstance(parts, (list, tuple))
        and bool(parts)
        and all(isinstance(p, torch.fx.Node) for p in parts)
    )


def _passes(gm: torch.fx.GraphModule, n: torch.fx.Node) -> str:
    """``pass`` (the output is on its input's grid), ``pool`` (a max-pool: the same, made a point) or ``""``."""
    if n.op == "call_module":
        mod = gm.get_submodule(str(n.target))
        if isinstance(mod, _PASS_MODULES) or type(mod) is nn.ReLU:
            return "pass"
        return "pool" if type(mod) is nn.MaxPool2d and not mod.return_indices else ""
    if n.op == "call_function":
        if n.target in _POOL_FUNCTIONS:
            return "" if n.kwargs.get("return_indices") else "pool"
        return "pass" if n.target in _PASS_FUNCTIONS else ""
    return "pass" if n.op == "call_method" and n.target in _PASS_METHODS else ""


def _activation_after(gm: torch.fx.GraphModule, n: torch.fx.Node) -> torch.fx.Node:
    """The ReLU/ReLU6 that is the only user of ``n``, else ``n``."""
    if len(n.users) != 1:
        return n
    (user,) = n.users
    if user.args[:1] != (n,):
        return n
    if user.op == "call_module" and activation_kind(gm.get_submodule(str(user.target))):
        return user
    if user.op == "call_function" and user.target in (torch.relu, F.relu, F.relu6, _ATEN.relu.default):
        return user
    return n


def plan_points(model: nn.Module, outputs: dict[str, str], static_layers: set[str]) -> PointPlan | None:
    """The points of ``model``, or None when it cannot be traced.

    Args:
        outputs: ``{module: layer}`` for each module whose output is a layer's quantized output
            (the layer, or the activation fused into it).
        static_layers: layers with a static input quantizer, which may take their source's grid.
    """
    gm, _ = trace_graph(model)
    if gm is None:
        return None
    plan = PointPlan(gm)
    source: dict[torch.fx.Node, str] = {}
    read: dict[str, set[str | None]] = {}
    for n in gm.graph.nodes:
        if n in source:  # an add's activation, already a point
            continue
        first = n.args[0] if n.args and isinstance(n.args[0], torch.fx.Node) else None
        if n.op == "call_module" and str(n.target) in static_layers:
            read.setdefault(str(n.target), set()).add(source.get(first) if first is not None else None)
        if n.op == "call_module" and str(n.target) in outputs:
            source[n] = f"layer:{outputs[str(n.target)]}"
        elif (_is_add(n) and all(a in source for a in n.args)) or (_is_cat(n) and all(p in source for p in n.args[0])):
            at = _activation_after(gm, n)
            plan.calibrate.append(at.name)
            if _is_cat(n):
                plan.concats.append(at.name)
            source[at] = f"point:{at.name}"
        elif first is not None and first in source and (how := _passes(gm, n)):
            source[n] = source[first]
            if how == "pool":
                plan.inherit[n.name] = source[first]
    plan.inputs = {name: next(iter(s)) for name, s in read.items() if len(s) == 1 and None not in s}  # type: ignore[misc]
    return plan


class _Tap(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.fn(x)
        return x


class ActQDQ(nn.Module):
    """``quantize -> dequantize`` of a tensor between layers, with the lowering's own function."""

    def __init__(self, aq: ActQuant, qdq: Callable[[torch.Tensor, ActQuant], torch.Tensor]) -> None:
        super().__init__()
        self.aq, self.qdq, self.enabled = aq, qdq, True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.qdq(x, self.aq) if self.enabled else x


def _insert_after(gm: torch.fx.GraphModule, modules: dict[str, nn.Module], prefix: str) -> torch.fx.GraphModule:
    nodes = {n.name: n for n in gm.graph.nodes}
    for i, (name, mod) in enumerate(modules.items()):
        node = nodes.get(name)
        if node is None:
            raise Unsupported(
                f"the model's dataflow has no node {name!r} where its quantization has an activation point: "
                "the saved quantization was made for another version of this model; quantize it again"
            )
        target = f"{prefix}{i}"
        gm.add_submodule(target, mod)
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(target, (node,))
        node.replace_all_uses_with(new, delete_user_cb=lambda u, new=new: u is not new)
    gm.recompile()
    return gm


def observing_module(plan: PointPlan, observe: dict[str, Callable[[torch.Tensor], Any]]) -> torch.fx.GraphModule:
    """A copy of the plan's trace that feeds each add point's output to ``observe[node]`` (its
    modules are the model's own, so hooks on them fire too)."""
    gm = torch.fx.GraphModule(plan.gm, plan.gm.graph.__deepcopy__())
    return _insert_after(gm, {n: _Tap(fn) for n, fn in observe.items()}, "_qw_observe_")


def insert_points(
    model: nn.Module, points: dict[str, ActQuant], qdq: Callable[[torch.Tensor, ActQuant], torch.Tensor]
) -> nn.Module:
    """``model`` traced, with :class:`ActQDQ` after each point's node (``model`` itself when there are none)."""
    if not points:
        return model
    gm, how = trace_graph(model)
    if gm is None:
        raise Unsupported(f"the model has activation points but cannot be traced now: {how}")
    return _insert_after(gm, {n: ActQDQ(aq, qdq) for n, aq in points.items()}, "_qw_act_")


def resolve_points(plan: PointPlan, calibrated: dict[str, ActQuant], layers: dict[str, Any]) -> dict[str, ActQuant]:
    """Every point's quantization (calibrated adds, max-pools on their source's grid); each static
    layer reading a quantized tensor takes that tensor's grid as its input quantization."""
    import dataclasses

    def grid(src: str) -> ActQuant:
        kind, _, name = src.partition(":")
        aq = layers[name].output if kind == "layer" else calibrated[name]
        return dataclasses.replace(aq)

    points = {**calibrated, **{n: grid(s) for n, s in plan.inherit.items()}}
    for name, src in plan.inputs.items():
        if name in layers and layers[name].input is not None:
            layers[name].input = grid(src)
    return points
