"""Small nn helpers shared by every layer of quantwise (core: imports nothing of ours but errors)."""

from __future__ import annotations

import torch
from torch import nn


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule called ``name`` (dotted path) with ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def is_hf_conv1d(mod: nn.Module) -> bool:
    """transformers' ``Conv1D`` itself (GPT-2's linear layer: ``x @ W + b``, ``W`` of shape (in, out))."""
    t = type(mod)
    return t.__name__ == "Conv1D" and t.__module__.startswith("transformers.") and hasattr(mod, "nf")


def canonicalize(model: nn.Module) -> list[str]:
    """Rewrite, in place, layers that are a Linear in another form into ``nn.Linear``.

    transformers' ``Conv1D`` computes ``addmm(b, x, W)`` with ``W`` stored (in, out); an
    ``nn.Linear`` with weight ``W.T`` computes the same values, so it is quantized and lowered
    like every other Linear. Only the exact class is rewritten (a subclass may add its own
    computation). Idempotent. Returns the names rewritten.
    """
    done = []
    for name, mod in list(model.named_modules()):
        if name and is_hf_conv1d(mod):
            w = mod.weight  # (in, out)
            lin = nn.Linear(w.shape[0], w.shape[1], bias=mod.bias is not None, device=w.device, dtype=w.dtype)
            with torch.no_grad():
                lin.weight.copy_(w.t())
                if mod.bias is not None:
                    lin.bias.copy_(mod.bias)
            lin.train(mod.training)
            set_module(model, name, lin)
            done.append(name)
    return done


def fold_batchnorm_structure(model: nn.Module, folded: dict[str, str]) -> None:
    """Replay the *structure* of a fold (for loading): give convs a bias, drop the BNs."""
    for conv_name, bn_name in folded.items():
        conv = model.get_submodule(conv_name)
        if conv.bias is None:
            conv.bias = nn.Parameter(torch.zeros(conv.out_channels))
        set_module(model, bn_name, nn.Identity())


def int8_dots_saturate() -> bool:
    """Whether this CPU's u8 x s8 int8 dot products go through a 16-bit intermediate that can saturate:
    x86 without VNNI (AVX2's vpmaddubsw adds two u8 x s8 products in int16), as ONNX Runtime's and
    PyTorch's int8 kernels use them. Weights within 7 bits cannot saturate it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx2" in flags and not {"avx512_vnni", "avx_vnni"} & set(flags)


def seven_bit_weights(setting: str) -> bool:
    """A recipe's ``reduce_range`` (``on``, ``off`` or ``auto``: on where int8 dot products saturate)."""
    return setting == "on" or (setting == "auto" and int8_dots_saturate())
