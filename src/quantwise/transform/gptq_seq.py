"""GPTQ run block by block: each repeated block (a transformer layer) is calibrated on the outputs
of the blocks before it *after* they were quantized, as the GPTQ authors and llm-compressor do.

Within a block every Linear is quantized from the block's input with the block's float weights
(no "true-sequential" re-run between a block's sub-layers); layers outside the blocks (an LM
head) are quantized last, from a pass through the whole quantized model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from quantwise.calibrate.collect import run_calibration
from quantwise.progress import progress_iter
from quantwise.transform.gptq import hessian_update
from quantwise.transform.registry import Batch

Quantize = Callable[[str, nn.Module, torch.Tensor], torch.Tensor]  # (name, module, hessian) -> dequantized weight


class _Stop(Exception):
    pass


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The longest ``nn.ModuleList`` (at least 2) whose every entry holds a Linear: the repeated blocks."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) < 2:
            continue
        if all(any(isinstance(x, nn.Linear) for x in b.modules()) for b in mod):
            if best is None or len(mod) > len(best[1]):
                best = (name, mod)
    return best


def _block_inputs(model: nn.Module, first: nn.Module, calib: Sequence[Batch]) -> list[tuple[tuple, dict]]:
    """The (args, kwargs) the first block receives for each calibration batch."""
    seen: list[tuple[tuple, dict]] = []

    def hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        seen.append((tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args), dict(kwargs)))
        raise _Stop

    h = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for b in calib:
                try:
                    model(*b)
                except _Stop:
                    pass
    finally:
        h.remove()
    return seen


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict, h: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (h, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": h}


def collect_hessians(mods: dict[str, Any], run: Callable[[], object]) -> dict[str, torch.Tensor]:
    """Input Hessians of ``mods`` over whatever ``run`` feeds them."""
    hess: dict[str, list[Any]] = {
        n: [torch.zeros(m.in_features, m.in_features, dtype=torch.float64), 0] for n, m in mods.items()
    }

    def make(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            hess[name][0], hess[name][1] = hessian_update(hess[name][0], hess[name][1], args[0].detach())

        return hook

    handles = [m.register_forward_pre_hook(make(n)) for n, m in mods.items()]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return {n: v[0] for n, v in hess.items()}


def sequential_gptq(
    model: nn.Module, linear: dict[str, nn.Module], calib: Sequence[Batch], quantize: Quantize
) -> dict[str, Any] | None:
    """Quantize ``linear`` (name -> module) block by block; ``quantize`` writes each layer's result
    into its module. Returns info, or None when the model has no repeated blocks (the caller then
    collects every Hessian in one pass)."""
    found = find_blocks(model)
    if found is None:
        return None
    prefix, blocks = found
    inputs = _block_inputs(model, blocks[0], calib)
    done: set[str] = set()
    for i, block in enumerate(progress_iter(list(blocks), f"GPTQ: {len(blocks)} blocks in sequence")):
        here = {n: m for n, m in linear.items() if n.startswith(f"{prefix}.{i}.")}

        def feed(block: nn.Module = block, inputs: list[tuple[tuple, dict]] = inputs) -> None:
            with torch.no_grad():
                for args, kwargs in inputs:
                    block(*args, **kwargs)

        hess = collect_hessians(here, feed)
        for n, m in here.items():
            quantize(n, m, hess[n])
            done.add(n)
        with torch.no_grad():  # the next block sees this block's quantized outputs
            nxt = []
            for args, kwargs in inputs:
                out = block(*args, **kwargs)
                nxt.append(_with_hidden(args, kwargs, out[0] if isinstance(out, tuple) else out))
            inputs = nxt
    rest = {n: m for n, m in linear.items() if n not in done}
    if rest:
        hess = collect_hessians(rest, lambda: run_calibration(model, calib, "GPTQ: layers outside the blocks"))
        for n, m in rest.items():
            quantize(n, m, hess[n])
    return {
        "gptq_order": "sequential by block",
        "gptq_blocks": f"{prefix} ({len(blocks)})",
        "gptq_outside_blocks": sorted(rest),
    }
