"""KV-cache INT8 in the simulation, defined as llama.cpp's ``Q8_0`` cache stores it.

Keys (after the rotary embedding) and values are cut, per token and per head, into blocks of 32
along the head dimension; each block keeps the values ``roundf(x * (1 / d))`` with
``d = max|x| / 127`` (half away from zero, as ggml computes them) and ``d`` stored as fp16. Per head *and* per token, because a
token's keys are written once and never rescaled as the cache grows, and heads differ in range
by an order of magnitude. The simulation quantizes every key and value the attention reads,
including the current token's, which is what a cache that stores a token before attending
does. Quantizing stored values again is exact (the block maximum maps onto 127), so the
simulation's decode with a float cache computes the same as one holding the int8 values.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

from quantwise.errors import Unsupported

NAME = "quantwise_kv_int8"
BLOCK = 32


def q8_0(x: torch.Tensor) -> torch.Tensor:
    """``x`` (..., D) through Q8_0 blocks of 32 along its last axis (D a multiple of 32)."""
    shape = x.shape
    b = x.to(torch.float32).reshape(*shape[:-1], shape[-1] // BLOCK, BLOCK)
    d = b.abs().amax(-1, keepdim=True) / 127.0
    inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / d)  # ggml rounds x * (1 / d) with the fp32 d
    y = b * inv
    q = torch.sign(y) * torch.floor(y.abs() + 0.5)
    return (q * d.to(torch.float16).to(torch.float32)).reshape(shape).to(x.dtype)  # and stores d as fp16


def _attention(
    module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *a: Any, **kw: Any
) -> Any:
    eager = sys.modules[type(module).__module__].eager_attention_forward
    return eager(module, query, q8_0(key), q8_0(value), *a, **kw)


def use_kv_int8(model: nn.Module) -> None:
    """Make every causal LM in ``model`` attend over Q8_0 keys and values (eager attention otherwise)."""
    from transformers import AttentionInterface

    lms: list[Any] = [m for m in model.modules() if hasattr(m, "generate") and hasattr(m, "config")]
    if not lms:
        raise Unsupported("kv_cache int8 applies to causal language models (a Hugging Face *ForCausalLM)")
    for lm in lms:
        cfg = lm.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        if head_dim % BLOCK:
            raise Unsupported(f"kv_cache int8 stores blocks of {BLOCK}; this model's head dimension is {head_dim}")
        attn = next((m for m in lm.modules() if type(m).__name__.endswith("Attention")), None)
        if attn is None or not hasattr(sys.modules[type(attn).__module__], "eager_attention_forward"):
            raise Unsupported("kv_cache int8: this architecture has no eager attention function to wrap")
        AttentionInterface.register(NAME, _attention)
        cfg._attn_implementation = NAME
