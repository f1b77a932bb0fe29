"""Structural rewrites before calibration: BatchNorm folding and ReLU fusion.

Both look at adjacent children of ``nn.Sequential`` containers, which is how the layers of
the models we quantize are wired. A pattern elsewhere is left alone, never guessed.
"""

from __future__ import annotations

import torch
from torch import nn

from quantwise.nnutil import fold_batchnorm_structure, set_module

__all__ = ["find_relu_after", "fold_batchnorm", "fold_batchnorm_structure", "set_module"]


def _adjacent_pairs(model: nn.Module) -> list[tuple[str, nn.Module, str, nn.Module]]:
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
        if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d) and b.track_running_stats:
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


def find_relu_after(model: nn.Module) -> dict[str, str]:
    """``{layer_name: relu_name}`` for each Conv2d/Linear followed by ``nn.ReLU`` in the same
    ``nn.Sequential``, with only ``nn.Identity`` (a folded BatchNorm) between them."""
    out = {}
    for parent_name, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential):
            continue
        prefix = f"{parent_name}." if parent_name else ""
        kids = [(n, m) for n, m in parent.named_children() if not isinstance(m, nn.Identity)]
        for (a_name, a), (b_name, b) in zip(kids, kids[1:]):
            if isinstance(a, (nn.Conv2d, nn.Linear)) and isinstance(b, nn.ReLU):
                out[prefix + a_name] = prefix + b_name
    return out
