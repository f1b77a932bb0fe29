"""A ``torch.export`` program as modules quantwise can quantize.

``ExportedProgram.module()`` computes with ATen calls on parameters (``aten.conv2d(x, w, b, ...)``,
``aten.linear``, ``aten.batch_norm``, ``aten.relu6``), not with ``nn.Conv2d``/``nn.Linear``
modules. Each such call on the program's own parameters is replaced here by the module that
computes exactly it, holding the very same Parameter objects, at the name of the module those
parameters belong to (``conv.weight`` -> module ``conv``), so layer names, include/exclude
patterns and the census read as in the original model. BatchNorm (inference form) and
ReLU/ReLU6 become modules too, so BatchNorm is folded and activations fused by dataflow.

Everything else stays the call it was. The lifted module is checked against the program on a
sample input before it is used: any difference beyond float rounding stops with the call that
differs, never a silently different model.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx
from torch import nn

from quantwise.errors import UserError

_ATEN = torch.ops.aten
_CONV = (_ATEN.conv2d.default,)
_LINEAR = (_ATEN.linear.default,)
_BN = (_ATEN.batch_norm.default,)
_ACT = {_ATEN.relu.default: "relu", _ATEN.relu6.default: "relu6", _ATEN.hardtanh.default: "hardtanh"}
# in place (``nn.ReLU6(inplace=True)`` exports as ``hardtanh_``): lifted only when nothing else reads the input
_ACT_INPLACE = {_ATEN.relu_.default: "relu", _ATEN.hardtanh_.default: "hardtanh"}


def _param(gm: torch.fx.GraphModule, node: Any) -> tuple[str, torch.Tensor] | None:
    """``(target, tensor)`` when ``node`` reads one of the program's tensors (get_attr), else None."""
    if not isinstance(node, torch.fx.Node) or node.op != "get_attr":
        return None
    owner, _, attr = str(node.target).rpartition(".")
    value = getattr(gm.get_submodule(owner), attr, None)
    return (str(node.target), value) if isinstance(value, torch.Tensor) else None


def _owner_name(gm: torch.fx.GraphModule, target: str, used: set[str], default: str) -> str:
    """The module name for a lifted layer: its weight's owner (``conv`` for ``conv.weight``) when
    that owner is a plain holder of tensors with no children, else a fresh name."""
    owner = target.rpartition(".")[0]
    if owner and owner not in used:
        mod = gm.get_submodule(owner)
        if type(mod) is nn.Module and not any(True for _ in mod.children()):
            return owner
    i = 0
    while f"{default}_{i}" in used or hasattr(gm, f"{default}_{i}"):
        i += 1
    return f"{default}_{i}"


def _module_for(gm: torch.fx.GraphModule, node: torch.fx.Node) -> tuple[nn.Module, str] | None:
    """The module computing ``node`` (and its weight's target), or None when it is not liftable."""
    a: list[Any] = list(node.args)
    if node.target in _CONV or node.target in _LINEAR:
        w = _param(gm, a[1]) if len(a) > 1 else None
        b = _param(gm, a[2]) if len(a) > 2 and a[2] is not None else None
        if w is None or (len(a) > 2 and a[2] is not None and b is None) or node.kwargs:
            return None
        weight = w[1]
        if not isinstance(weight, nn.Parameter) or (b is not None and not isinstance(b[1], nn.Parameter)):
            return None
        mod: nn.Module
        if node.target in _LINEAR:
            if weight.dim() != 2:
                return None
            mod = nn.Linear(weight.shape[1], weight.shape[0], bias=b is not None, device="meta")
        else:
            if weight.dim() != 4:
                return None
            stride, padding, dilation, groups = (a[3:] + [None] * 4)[:4]
            mod = nn.Conv2d(
                weight.shape[1] * int(groups or 1),
                weight.shape[0],
                (int(weight.shape[2]), int(weight.shape[3])),
                stride=tuple(stride or (1, 1)),
                padding=tuple(padding or (0, 0)),
                dilation=tuple(dilation or (1, 1)),
                groups=int(groups or 1),
                bias=b is not None,
                device="meta",
            )
        mod.weight = weight
        if b is not None:
            mod.bias = b[1]  # type: ignore[assignment]
        return mod, w[0]
    if node.target in _BN:
        found = [_param(gm, x) for x in a[1:5]]
        training, momentum, eps = a[5], a[6], a[7]
        val = a[0].meta.get("val") if isinstance(a[0], torch.fx.Node) else None
        ts = [f for f in found if f is not None]
        if training or len(ts) != 4 or val is None or val.dim() != 4:
            return None
        gamma, beta, mean, var = (t for _, t in ts)
        if not (isinstance(gamma, nn.Parameter) and isinstance(beta, nn.Parameter)):
            return None
        bn = nn.BatchNorm2d(gamma.shape[0], eps=float(eps), momentum=float(momentum), device="meta")
        bn.weight, bn.bias = gamma, beta
        bn.running_mean, bn.running_var = mean, var
        bn.num_batches_tracked = None
        return bn.eval(), ts[0][0]
    if node.target in _ACT_INPLACE and isinstance(a[0], torch.fx.Node) and len(a[0].users) != 1:
        return None
    if node.target in _ACT or node.target in _ACT_INPLACE:
        kind = {**_ACT, **_ACT_INPLACE}[node.target]  # type: ignore[index]
        if kind == "hardtanh" and tuple(float(x) for x in a[1:3]) != (0.0, 6.0):
            return None
        return (nn.ReLU() if kind == "relu" else nn.ReLU6()), ""
    return None


def lift_modules(gm: torch.fx.GraphModule, example: tuple[torch.Tensor, ...] | None = None) -> dict[str, Any]:
    """Replace, in place, the liftable ATen calls of ``gm`` (``ExportedProgram.module()``) by modules.

    Returns ``{"lifted": {module name: op}, "left": {op: count}}``: what became a module, and the
    calls on parameters that stayed functional (a weight computed at run time, other ops).
    With ``example``, the lifted module's output is compared with the program's first.
    """
    ref = None
    if example is not None:
        with torch.no_grad():
            ref = gm(*example)
    used: set[str] = set()
    lifted: dict[str, str] = {}
    left: dict[str, int] = {}
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        op = str(node.target).replace("aten.", "").replace(".default", "")
        found = _module_for(gm, node)
        if found is None:
            if node.target in _CONV or node.target in _LINEAR:
                left[op] = left.get(op, 0) + 1
            continue
        mod, target = found
        name = _owner_name(gm, target, used, op.replace(".", "_")) if target else _owner_name(gm, "", used, op)
        used.add(name)
        owner, _, attr = name.rpartition(".")
        setattr(gm.get_submodule(owner) if owner else gm, attr, mod)
        with gm.graph.inserting_before(node):
            new = gm.graph.call_module(name, (node.args[0],))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        lifted[name] = op
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and not node.users:
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    if ref is not None and example is not None:
        try:
            with torch.no_grad():
                out = gm(*example)
        except Exception as e:  # a lifted layer computing another shape breaks whatever reads it
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise UserError(
                f"lifting the exported program changed what it computes ({first}): pass the nn.Module instead"
            ) from None
        check_same(ref, out)
    return {"lifted": lifted, "left": left}


def check_same(ref: Any, out: Any) -> None:
    """The lifted module computes what the program did (float rounding aside)."""
    refs = ref if isinstance(ref, (tuple, list)) else (ref,)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    for r, o in zip(refs, outs, strict=True):
        if r.shape != o.shape:
            raise UserError(
                f"lifting the exported program changed an output's shape {tuple(r.shape)} -> {tuple(o.shape)}"
            )
        err = float((r - o).abs().max())
        if err > 1e-5 * max(float(r.abs().max()), 1.0):
            raise UserError(f"lifting the exported program changed its output by {err:.3g}: pass the nn.Module instead")


def load_exported(path: str, example: tuple[torch.Tensor, ...] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """A ``torch.export.save`` file as a module with liftable layers as modules, and what was lifted."""
    try:
        ep = torch.export.load(path)
    except Exception as e:  # a corrupt or foreign file: torch raises many kinds
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise UserError(f"cannot load the torch.export program {path}: {first}") from None
    return lift_program(ep, example)


def lift_program(ep: Any, example: tuple[torch.Tensor, ...] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """An ``ExportedProgram``'s module, lifted (see :func:`lift_modules`), checked on ``example``
    or else on the example inputs saved with the program."""
    if example is None and getattr(ep, "example_inputs", None):  # saved with the program since torch 2.5
        args, kwargs = ep.example_inputs
        example = tuple(args) if not kwargs and all(isinstance(a, torch.Tensor) for a in args) else None
    gm = ep.module()
    info = lift_modules(gm, example)
    info["checked_on"] = "the program's example inputs" if example is not None else "nothing (no example inputs)"
    # a plain GraphModule over the same graph and modules: the exported one refuses .eval()/.train()
    plain = torch.fx.GraphModule(gm, gm.graph, class_name=type(ep.module()).__name__.replace("Impl", ""))
    return plain.eval(), info
