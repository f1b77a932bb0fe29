"""Structural rewrites before calibration: BatchNorm folding and ReLU/ReLU6 fusion.

Pairs are found by dataflow: the model is traced with ``torch.fx`` and a layer pairs with the
module that consumes its output when that is the output's only use and each module is called
once (so a BatchNorm called from ``forward()``, outside any ``nn.Sequential``, is folded, and a
ReLU module shared by several layers is never replaced). When tracing fails (data-dependent
control flow), adjacent children of ``nn.Sequential`` containers are used instead, and
:func:`pairing_method` says which and why. A pattern neither finds is left alone, never guessed.
"""

from __future__ import annotations

import torch
from torch import nn

from quantwise.nnutil import fold_batchnorm_structure, set_module

__all__ = ["activation_kind", "find_relu_after", "fold_batchnorm", "fold_batchnorm_structure", "set_module"]


def pairing_method(model: nn.Module) -> str:
    """``fx`` when the dataflow trace succeeded, else ``modules (...)`` with the tracer's reason."""
    return _trace(model)[1]


def trace_graph(model: nn.Module) -> tuple[torch.fx.GraphModule | None, str]:
    """A ``torch.fx`` trace of ``model`` (sharing its modules), or None and the tracer's reason."""
    import torch.fx

    try:
        return torch.fx.symbolic_trace(model), "fx"
    except Exception as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:120]
        return None, f"modules (torch.fx could not trace the model: {type(e).__name__}: {first})"


def call_counts(gm: torch.fx.GraphModule) -> dict[str, int]:
    """How many times the traced forward calls each module."""
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[str(n.target)] = calls.get(str(n.target), 0) + 1
    return calls


def _trace(model: nn.Module) -> tuple[list[tuple[str, str]] | None, str]:
    """``[(producer, consumer)]`` module pairs from a ``torch.fx`` trace, and how they were found.

    The consumer is called once, or is a stateless ReLU/ReLU6 called from several places (one
    ``self.relu`` shared by a block: applying it again is exact, so it can be fused and kept)."""
    gm, how = trace_graph(model)
    if gm is None:
        return None, how
    calls = call_counts(gm)
    pairs = []
    for n in gm.graph.nodes:
        if n.op != "call_module" or calls[str(n.target)] != 1 or len(n.users) != 1:
            continue
        (user,) = n.users
        if user.op != "call_module" or user.args[:1] != (n,) or len(user.args) != 1:
            continue
        once = calls[str(user.target)] == 1
        if once or activation_kind(gm.get_submodule(str(user.target))) is not None:
            pairs.append((str(n.target), str(user.target)))
    return pairs, "fx"


def shared_activations(model: nn.Module) -> set[str]:
    """Activation modules the traced forward calls more than once (empty when it cannot be traced)."""
    gm, _ = trace_graph(model)
    if gm is None:
        return set()
    return {name for name, k in call_counts(gm).items() if k > 1 and activation_kind(gm.get_submodule(name))}


def _adjacent_pairs(model: nn.Module) -> list[tuple[str, nn.Module, str, nn.Module]]:
    traced, _ = _trace(model)
    if traced is not None:
        return [(a, model.get_submodule(a), b, model.get_submodule(b)) for a, b in traced]
    pairs = []
    for parent_name, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent.named_children())
        for (a_name, a), (b_name, b) in zip(children, children[1:]):
            prefix = f"{parent_name}." if parent_name else ""
            pairs.append((prefix + a_name, a, prefix + b_name, b))
    return pairs


def fold_batchnorm(model: nn.Module) -> dict[str, str]:
    """Fold every ``Conv2d -> BatchNorm2d`` pair in place; the BN becomes ``nn.Identity``.

    Returns:
        ``{conv_name: bn_name}`` for each fold.

    The folded conv computes ``gamma * (conv(x) - mean) / sqrt(var + eps) + beta`` with
    ``W' = W * gamma / sqrt(var + eps)`` and ``b' = (b - mean) * gamma / sqrt(var + eps) + beta``.
    """
    folded = {}
    for a_name, a, b_name, b in _adjacent_pairs(model):
        if isinstance(a, nn.Conv2d) and type(b) is nn.BatchNorm2d and b.track_running_stats and b.affine:
            assert b.running_var is not None and b.running_mean is not None  # track_running_stats
            with torch.no_grad():
                inv = b.weight / torch.sqrt(b.running_var + b.eps)  # (C_out,)
                a.weight.mul_(inv.reshape(-1, 1, 1, 1))
                bias = a.bias if a.bias is not None else torch.zeros_like(b.running_mean)
                new_bias = (bias - b.running_mean) * inv + b.bias
                if a.bias is None:
                    a.bias = nn.Parameter(new_bias)
                else:
                    a.bias.copy_(new_bias)
            set_module(model, b_name, nn.Identity())
            folded[a_name] = b_name
    return folded


def activation_kind(mod: nn.Module) -> str | None:
    """``relu`` for ``nn.ReLU``, ``relu6`` for ``nn.ReLU6`` or ``nn.Hardtanh(0, 6)``, else None
    (exact classes only: a subclass may compute something else)."""
    if type(mod) is nn.ReLU:
        return "relu"
    if type(mod) in (nn.ReLU6, nn.Hardtanh) and (mod.min_val, mod.max_val) == (0.0, 6.0):  # type: ignore[union-attr]
        return "relu6"
    return None


def find_relu_after(model: nn.Module) -> dict[str, str]:
    """``{layer_name: activation_name}`` for each Conv2d/Linear whose only consumer is a ReLU or
    ReLU6 module (:func:`activation_kind`) called once (by dataflow), or that is followed by one in
    the same ``nn.Sequential`` with only ``nn.Identity`` (a folded BatchNorm) between them when the
    model cannot be traced."""
    traced, _ = _trace(model)
    if traced is not None:
        return {
            a: b
            for a, b in _through_identity(model, traced)
            if isinstance(model.get_submodule(a), (nn.Conv2d, nn.Linear)) and activation_kind(model.get_submodule(b))
        }
    out = {}
    for parent_name, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential):
            continue
        prefix = f"{parent_name}." if parent_name else ""
        kids = [(n, m) for n, m in parent.named_children() if not isinstance(m, nn.Identity)]
        for (a_name, a), (b_name, b) in zip(kids, kids[1:]):
            if isinstance(a, (nn.Conv2d, nn.Linear)) and activation_kind(b):
                out[prefix + a_name] = prefix + b_name
    return out


def _through_identity(model: nn.Module, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Pairs with ``nn.Identity`` (a folded BatchNorm) skipped: conv -> identity -> relu gives conv -> relu."""
    nxt = dict(pairs)
    out = []
    for a, b in pairs:
        if isinstance(model.get_submodule(a), nn.Identity):
            continue
        while isinstance(model.get_submodule(b), nn.Identity) and b in nxt:
            b = nxt[b]
        out.append((a, b))
    return out
