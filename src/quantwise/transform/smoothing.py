"""Per-input-channel scales folded into the operation before a group of Linears (AWQ, SmoothQuant).

A *group* is a module whose output tensor is itself the input of one or more Linears: a norm
with a per-channel weight (RMSNorm, LayerNorm) or a Linear. Groups are found by running the
model once with hooks and matching tensor identity, so no architecture's module names are
assumed. A Linear whose input scales channel by channel with a sibling Linear's output (a gated
MLP's ``down(act(gate(x)) * up(x))`` with ``up``) is a group of that sibling, found by trying
the fold on the parent module's own inputs. Dividing output channel ``c`` of that module by
``s_c`` and multiplying column ``c`` of each Linear's weight by ``s_c`` leaves the float model's
function unchanged; the change is checked on a calibration batch, and a model whose outputs
move (a norm computing ``(1 + w) * x``, an output that also feeds something else) is refused,
never silently changed.

- AWQ (Lin et al. 2024): ``s = mean|x|^a`` (normalised), ``a`` searched per group on a grid so that
  the group's outputs with quantized scaled weights are closest to the float outputs.
- SmoothQuant (Xiao et al. 2023): ``s = max|x|^a / max|w|^(1-a)``, ``a`` searched per group on the
  calibration data for that group's W8A8 output error; it does not scale through a sibling Linear
  (down_proj), which on SmolLM2 made W8A8 worse while AWQ gains from it (benchmarks/README.md,
  ``llm_smoothing.py``: per-token W8A8 +2.97% perplexity per group, +4.09% with one strength per model).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from quantwise.errors import Unsupported
from quantwise.numerics import UINT8, dequantize, quantize_tensor
from quantwise.numerics.granularity import PerTensor
from quantwise.progress import progress_iter
from quantwise.transform.registry import Batch

Quant = Callable[[torch.Tensor], torch.Tensor]  # weight (N, K) -> its dequantized quantization
ROWS = 1024  # activation rows kept per group for the searches
AWQ_GRID = 20
SQ_ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)


@dataclass
class Group:
    """Linears fed by the output of ``prev``; ``x`` holds sampled input rows, ``amax`` and
    ``amean`` the per-channel max and mean of |x| over all calibration tokens."""

    prev: str
    linears: list[str]
    x: torch.Tensor
    amax: torch.Tensor
    amean: torch.Tensor


def _channel_op(mod: nn.Module) -> bool:
    """A module whose output channel ``c`` is scaled by scaling its own parameters' entry ``c``."""
    if isinstance(mod, nn.Linear):
        return True
    w = getattr(mod, "weight", None)
    return "norm" in type(mod).__name__.lower() and isinstance(w, torch.Tensor) and w.dim() == 1


def find_groups(
    model: nn.Module,
    linears: dict[str, nn.Linear],
    calib: Sequence[Any],
    forward: Callable[[Any], Any] | None = None,
    siblings: bool = True,
) -> tuple[list[Group], dict[str, str]]:
    """Groups among ``linears`` with their calibration statistics, and ``{linear: why not}``.

    ``forward(item)`` runs one calibration item (default ``model(*item)``; streaming runs one
    block on its inputs). ``siblings``: also scale a Linear through a sibling (``linear_feeders``)."""
    forward = forward or (lambda b: model(*b))
    names = {id(m): n for n, m in model.named_modules()}
    # weak references, so a tensor id reused after its producer's output was freed never matches
    produced: dict[int, tuple[str, weakref.ref[torch.Tensor]]] = {}
    fed: dict[str, str | None] = {}
    handles = []

    def on_out(mod: nn.Module, _a: tuple, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            produced[id(out)] = (names[id(mod)], weakref.ref(out))

    def on_in(mod: nn.Module, args: tuple) -> None:
        hit = produced.get(id(args[0]))
        fed.setdefault(names[id(mod)], hit[0] if hit is not None and hit[1]() is args[0] else None)

    for _n, m in model.named_modules():
        if _channel_op(m):
            handles.append(m.register_forward_hook(on_out))
    for m in linears.values():
        handles.append(m.register_forward_pre_hook(on_in))
    tries = _sibling_candidates(model, linears) if siblings else {}
    calls = _capture_calls(model, {p for p, _ in tries.values()})  # in the same forward
    handles += calls.handles
    try:
        with torch.no_grad():
            forward(calib[0])
    finally:
        for h in handles:
            h.remove()
    through = linear_feeders(model, {n: t for n, t in tries.items() if fed.get(n) is None}, calls.seen, linears)
    by_prev: dict[str, list[str]] = {}
    why: dict[str, str] = {}
    for n in linears:
        src = fed.get(n) or through.get(n)
        if src is None:
            why[n] = (
                "its input is not the output of a norm or Linear, nor scales with one (attention): no scale folded"
                if siblings
                else "its input is not the output of a norm or Linear: no scale folded"
            )
        else:
            by_prev.setdefault(src, []).append(n)
    stats = _input_stats({p: linears[ls[0]] for p, ls in by_prev.items()}, calib, forward)
    groups = [Group(p, ls, *stats[p]) for p, ls in by_prev.items()]
    return groups, why


def _sibling_candidates(model: nn.Module, linears: dict[str, nn.Linear]) -> dict[str, tuple[str, list[str]]]:
    """``{linear: (parent, sibling Linears with as many outputs as it has inputs)}``."""
    mods = dict(model.named_modules())
    tries: dict[str, tuple[str, list[str]]] = {}
    for n, lin in linears.items():
        parent = n.rpartition(".")[0]
        if not parent:
            continue
        sib = [
            m
            for m, mod in mods.items()
            if m != n and m.rpartition(".")[0] == parent
            if isinstance(mod, nn.Linear) and mod.out_features == lin.in_features
        ]
        if sib:
            tries[n] = (parent, sib)
    return tries


@dataclass
class _Calls:
    """The first call's ``(args, kwargs)`` of each hooked module, and the hooks to remove."""

    seen: dict[str, tuple[tuple, dict]]
    handles: list[Any]


def _capture_calls(model: nn.Module, names: set[str]) -> _Calls:
    calls = _Calls({}, [])

    def grab(p: str) -> Callable[[nn.Module, tuple, dict], None]:
        def hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            calls.seen.setdefault(p, (args, kwargs))

        return hook

    calls.handles = [model.get_submodule(p).register_forward_pre_hook(grab(p), with_kwargs=True) for p in names]
    return calls


def linear_feeders(
    model: nn.Module,
    tries: dict[str, tuple[str, list[str]]],
    seen: dict[str, tuple[tuple, dict]],
    linears: dict[str, nn.Linear],
) -> dict[str, str]:
    """``{linear: sibling Linear}`` for Linears whose input is computed from a sibling Linear's output
    channel by channel and linearly in it, as a gated MLP's ``down(act(gate(x)) * up(x))`` is in ``up``.

    Nothing is assumed from names: each candidate sibling (``tries``: same parent module, as many outputs
    as the linear has inputs) is tried on the parent's own inputs from one calibration forward (``seen``).
    With the sibling's output rows divided by random ``s`` and the linear's columns multiplied by ``s``,
    the linear's input must come out divided by ``s`` exactly and the parent's output must not move."""
    found: dict[str, str] = {}
    for n, (parent, sib) in tries.items():
        if parent in seen:
            mod = model.get_submodule(parent)
            hit = next((m for m in sib if _scales_through(mod, seen[parent], model.get_submodule(m), linears[n])), None)
            if hit is not None:
                found[n] = hit
    return found


def _scales_through(parent: nn.Module, call: tuple[tuple, dict], prev: nn.Module, lin: nn.Linear) -> bool:
    s = torch.rand(lin.in_features, generator=torch.Generator().manual_seed(0)) * 1.5 + 0.5
    params = [p for p in (prev.weight, getattr(prev, "bias", None), lin.weight) if isinstance(p, torch.Tensor)]
    saved = [p.detach().clone() for p in params]
    inputs: list[torch.Tensor] = []
    h = lin.register_forward_pre_hook(lambda _m, a: inputs.append(a[0].detach().to(torch.float32).clone()))
    args, kwargs = call
    try:
        with torch.no_grad():
            ref = _first(parent(*args, **kwargs)).clone()
            fold_pair(prev, [lin], s)
            out = _first(parent(*args, **kwargs))
    finally:
        h.remove()
        with torch.no_grad():
            for p, v in zip(params, saved, strict=True):
                p.copy_(v)
    if len(inputs) != 2 or inputs[0].shape != inputs[1].shape or out.shape != ref.shape:
        return False
    x0, x1 = inputs

    def close(a: torch.Tensor, b: torch.Tensor) -> bool:
        return float((a - b).abs().max()) <= 1e-4 * float(b.abs().max().clamp(min=1e-12))

    return close(x1 * s, x0) and close(out, ref)


def _input_stats(
    first: dict[str, nn.Linear], calib: Sequence[Any], forward: Callable[[Any], Any]
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    rows: dict[str, list[torch.Tensor]] = {p: [] for p in first}
    amax: dict[str, torch.Tensor] = {}
    asum: dict[str, torch.Tensor] = {}
    count = {p: 0 for p in first}
    per_batch = max(1, ROWS // max(1, len(calib)))

    def make(p: str) -> Callable[[nn.Module, tuple], None]:
        def hook(_m: nn.Module, args: tuple) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float32)
            a = x.abs()
            amax[p] = torch.maximum(amax[p], a.amax(0)) if p in amax else a.amax(0)
            asum[p] = asum[p] + a.sum(0) if p in asum else a.sum(0)
            count[p] += x.shape[0]
            idx = torch.linspace(0, x.shape[0] - 1, min(per_batch, x.shape[0])).long()
            rows[p].append(x[idx])

        return hook

    handles = [m.register_forward_pre_hook(make(p)) for p, m in first.items()]
    try:
        with torch.no_grad():
            for b in progress_iter(calib, "smoothing: activation statistics"):
                forward(b)
    finally:
        for h in handles:
            h.remove()
    return {p: (torch.cat(rows[p]), amax[p], asum[p] / max(1, count[p])) for p in first}


def fold(model: nn.Module, group: Group, s: torch.Tensor) -> None:
    """Divide ``group.prev``'s output channels by ``s`` and multiply the Linears' input columns by it."""
    fold_pair(model.get_submodule(group.prev), [model.get_submodule(n) for n in group.linears], s)


def fold_pair(prev: nn.Module, linears: Sequence[nn.Module], s: torch.Tensor) -> None:
    w: torch.Tensor = prev.weight  # type: ignore[assignment]
    b = getattr(prev, "bias", None)
    with torch.no_grad():
        w.div_(s[:, None] if isinstance(prev, nn.Linear) else s)
        if isinstance(b, torch.Tensor):
            b.div_(s)
        for lin in linears:
            lw: torch.Tensor = lin.weight  # type: ignore[assignment]
            lw.mul_(s[None, :])


Weights = list[tuple[torch.Tensor, Quant, torch.Tensor]]  # (weight, its quantization, float outputs)


def _out_err(x: torch.Tensor, ws: Weights, s: torch.Tensor, act: Quant | None) -> float:
    """Relative squared error of the group's outputs, scaled and quantized, against float."""
    xs = x / s
    if act is not None:
        xs = act(xs)
    err = 0.0
    for w, quant, ref in ws:
        err += float((xs @ quant(w * s[None, :]).t() - ref).pow(2).sum() / ref.pow(2).sum().clamp(min=1e-12))
    return err


def _weights(model: nn.Module, g: Group, quant_for: Callable[[str], Quant]) -> Weights:
    out = []
    for n in g.linears:
        w = _weight(model, n)
        out.append((w, quant_for(n), g.x @ w.t()))
    return out


def _weight(model: nn.Module, name: str) -> torch.Tensor:
    w: torch.Tensor = model.get_submodule(name).weight  # type: ignore[assignment]
    return w.detach().to(torch.float32)


def awq(model: nn.Module, groups: list[Group], quant_for: Callable[[str], Quant]) -> dict[str, Any]:
    """Search and fold AWQ scales group by group (``quant_for(linear)`` is that layer's weight
    quantization); returns each group's exponent (0: no scaling was best)."""
    alphas: dict[str, float] = {}
    for g in progress_iter(groups, "AWQ: searching scales"):
        ws = _weights(model, g, quant_for)
        mean = g.amean.clamp(min=1e-5)
        best = (_out_err(g.x, ws, torch.ones_like(mean), None), 0.0, torch.ones_like(mean))
        for i in range(1, AWQ_GRID + 1):
            s = mean.pow(i / AWQ_GRID)
            s = s / (s.max() * s.min()).sqrt()
            e = _out_err(g.x, ws, s, None)
            if e < best[0]:
                best = (e, i / AWQ_GRID, s)
        fold(model, g, best[2])
        alphas[g.prev] = best[1]
    return {"exponents": alphas}


def per_token_int8(x: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 per row, as the dynamic per-token kernels compute it (scale max|x| / 127)."""
    s = (x.abs().amax(dim=1, keepdim=True) / 127.0).clamp(min=1e-12)
    return torch.clamp(torch.round(x / s), -128, 127) * s


def smoothquant(
    model: nn.Module, groups: list[Group], quant_for: Callable[[str], Quant], act: Quant, alpha: float | None
) -> dict[str, Any]:
    """Fold SmoothQuant scales with migration strength ``alpha``, or (None) each group's own strength
    searched on its calibration rows over ``SQ_ALPHAS`` and no smoothing, for its W8A8 output error."""
    wmax = {g.prev: torch.stack([_weight(model, n).abs().amax(0) for n in g.linears]).amax(0) for g in groups}

    def scales(g: Group, a: float) -> torch.Tensor:
        return (g.amax.clamp(min=1e-5).pow(a) / wmax[g.prev].clamp(min=1e-5).pow(1 - a)).clamp(min=1e-5)

    chosen: dict[str, float | None] = {g.prev: alpha for g in groups}
    errors: dict[str, float] = {}
    if alpha is None:
        for g in progress_iter(groups, "SmoothQuant: searching each group's migration strength"):
            ws = _weights(model, g, quant_for)
            errs = {
                a: _out_err(g.x, ws, torch.ones_like(g.amax) if a is None else scales(g, a), act)
                for a in (None, *SQ_ALPHAS)
            }
            chosen[g.prev] = min(errs, key=errs.__getitem__)
            errors["none"] = errors.get("none", 0.0) + errs[None]
            errors["chosen"] = errors.get("chosen", 0.0) + errs[chosen[g.prev]]
    for g in groups:
        a = chosen[g.prev]
        if a is not None:
            fold(model, g, scales(g, a))
    return {"alpha": alpha, "alphas": chosen, "searched": alpha is None, "relative_output_error": errors}


FOLD_CAUSE = "some scaled output feeds more than the Linears or a norm is not x * weight"


def check_unchanged(
    model: nn.Module,
    before: torch.Tensor,
    batch: Batch,
    what: str,
    cause: str = FOLD_CAUSE,
    done: str = "folding the scales",
) -> float:
    """Refuse when a rewrite (``done``) moved the float model's output on ``batch`` (it must be exact up to
    rounding); returns the max relative change."""
    with torch.no_grad():
        after = _first(model(*batch))
    diff = float((after - before).abs().max() / before.abs().max().clamp(min=1e-12))
    if diff > 1e-3:
        raise Unsupported(
            f"{what}: {done} changed the float model's outputs (max relative change {diff:.1e}), so "
            f"{cause}; use the recipe without it"
        )
    return diff


def _first(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return _first(out[0])
    return _first(out["logits"] if "logits" in out else next(iter(out.values())))


def reference_output(model: nn.Module, batch: Batch) -> torch.Tensor:
    with torch.no_grad():
        return _first(model(*batch)).clone()


def smooth(
    model: nn.Module,
    linears: dict[str, nn.Linear],
    calib: Sequence[Batch],
    what: str,
    search: Callable[[list[Group]], dict[str, Any]],
    siblings: bool = True,
) -> dict[str, Any]:
    """Find the groups among ``linears``, fold the scales ``search`` chooses, check the float
    model is unchanged, and return what was done for the record."""
    if not calib:
        raise Unsupported(f"{what} needs calibration data")
    before = reference_output(model, calib[0])
    groups, why = find_groups(model, linears, calib, siblings=siblings)
    if not groups:
        raise Unsupported(
            f"{what}: no nn.Linear here takes its input straight from a norm or a Linear, so there is nowhere to "
            "fold the scales (other layer types, such as transformers' Conv1D, are not scaled yet); use the recipe without it"
        )
    info = search(groups)
    check_unchanged(model, before, calib[0], what)
    return {
        **info,
        "groups": len(groups),
        "scaled_layers": sum(len(g.linears) for g in groups),
        "unscaled_layers": why,
    }


def per_tensor_uint8(x: torch.Tensor) -> torch.Tensor:
    """Affine uint8 over the whole tensor (the per-tensor dynamic and static activations)."""
    q, s, z = quantize_tensor(x, UINT8, PerTensor(), False)
    return dequantize(q, s, z)
