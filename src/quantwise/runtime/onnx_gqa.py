"""A Llama-style decoder's step graph with ONNX Runtime's fused ``GroupQueryAttention``.

The generic step graph (``onnx_lm.CausalLMStep``) exports Hugging Face's own forward: its causal
mask, position ids, rotary embedding and grouped-query ``repeat_kv`` become hundreds of small
Concat / Expand / Gather / Unsqueeze nodes per decode step. On SmolLM2 with a 540-token cache they
took about 60% of a W4A8 decode step's node time in ONNX Runtime's profile (MatMulNBits 27%),
2026-12-04. Here each layer's attention is one ``com.microsoft::GroupQueryAttention`` node
(rotary inside, causal, keys and values read per KV head), and the layers around it are the
lowered model's own modules (norms, quantized projections, MLP), called as the decoder calls them.

Taken only when the decoder is exactly that structure (``fused_step`` says why not otherwise, and
the caller exports the generic graph); the FP32 fidelity guard and the runtime-vs-simulation check
compare the graph against the PyTorch model as for any export.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.autograd import Function

MAX_POSITIONS = 8192  # rows of the rotary cos/sin tables written into the graph
_TYPES = ("llama", "qwen2")  # decoders whose layer is norm -> q/k/v -> rotary attention -> o -> norm -> MLP


def _const(g: Any, value: torch.Tensor) -> Any:
    return g.op("Constant", value_t=value)


class GroupQueryAttention(Function):
    """Causal attention with rotary positions over a KV cache: ``(q, k, v, past_k, past_v) ->
    (y, present_k, present_v)``; q ``(B, S, heads * D)``, k/v ``(B, S, kv_heads * D)``, caches
    ``(B, kv_heads, T, D)`` holding rotated keys. The forward is the reference in PyTorch; the
    symbolic is ONNX Runtime's contrib op with the same definition."""

    @staticmethod
    def forward(ctx, q, k, v, past_k, past_v, cos, sin, heads: int, kv_heads: int):  # type: ignore[override]
        b, s, _ = q.shape
        d = past_k.shape[-1]
        t = past_k.shape[2]
        pos = torch.arange(t, t + s)
        q = _rotate(q.view(b, s, heads, d).transpose(1, 2), cos, sin, pos)
        k = _rotate(k.view(b, s, kv_heads, d).transpose(1, 2), cos, sin, pos)
        v = v.view(b, s, kv_heads, d).transpose(1, 2)
        keys, values = torch.cat([past_k, k], 2), torch.cat([past_v, v], 2)
        rep = heads // kv_heads
        mask = torch.arange(t + s)[None, :] <= pos[:, None]
        y = nn.functional.scaled_dot_product_attention(
            q, keys.repeat_interleave(rep, 1), values.repeat_interleave(rep, 1), attn_mask=mask
        )
        return y.transpose(1, 2).reshape(b, s, heads * d), keys, values

    @staticmethod
    def symbolic(g, q, k, v, past_k, past_v, cos, sin, heads: int, kv_heads: int):
        shape = g.op("Shape", q)
        batch = g.op("Gather", shape, _const(g, torch.tensor([0])), axis_i=0)  # (1,)
        total = g.op(
            "Add",
            g.op("Gather", g.op("Shape", past_k), _const(g, torch.tensor(2)), axis_i=0),
            g.op("Gather", shape, _const(g, torch.tensor(1)), axis_i=0),
        )
        total32 = g.op("Cast", total, to_i=6)  # INT32 scalar: total_sequence_length
        # seqlens_k: per row, the index of its last token (every row is full length here)
        seqlens = g.op("Expand", g.op("Sub", total32, _const(g, torch.tensor(1, dtype=torch.int32))), batch)
        return g.op(
            "com.microsoft::GroupQueryAttention",
            q,
            k,
            v,
            past_k,
            past_v,
            seqlens,
            total32,
            cos,
            sin,
            num_heads_i=heads,
            kv_num_heads_i=kv_heads,
            do_rotary_i=1,
            rotary_interleaved_i=0,
            outputs=3,
        )


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in halves (Llama's ``rotate_half``), positions ``pos``; cos/sin ``(P, D/2)``."""
    c, s = cos[pos], sin[pos]
    c, s = torch.cat([c, c], -1)[None, None], torch.cat([s, s], -1)[None, None]
    half = x.shape[-1] // 2
    return x * c + torch.cat([-x[..., half:], x[..., :half]], -1) * s


class FusedDecoderStep(nn.Module):
    """``(input_ids, *past) -> (logits, *present)``: the decoder's modules around one
    ``GroupQueryAttention`` per layer."""

    uses_contrib_ops = True

    def __init__(self, lm: nn.Module, cos: torch.Tensor, sin: torch.Tensor, heads: int, kv_heads: int) -> None:
        super().__init__()
        self.lm = lm
        self.register_buffer("cos", cos)
        self.register_buffer("sin", sin)
        self.heads, self.kv_heads = heads, kv_heads

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        body: Any = self.lm.model  # type: ignore[union-attr]
        x = body.embed_tokens(input_ids)
        present: list[torch.Tensor] = []
        for i, layer in enumerate(body.layers):
            a = layer.self_attn
            h = layer.input_layernorm(x)
            y, keys, values = GroupQueryAttention.apply(
                a.q_proj(h), a.k_proj(h), a.v_proj(h), past[2 * i], past[2 * i + 1], self.cos, self.sin,
                self.heads, self.kv_heads,
            )  # fmt: skip
            x = x + a.o_proj(y)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
            present += [keys, values]
        return (self.lm.lm_head(body.norm(x)), *present)  # type: ignore[operator]


def fused_step(lm: Any) -> tuple[FusedDecoderStep | None, str]:
    """The fused step module for ``lm``, or None and why the generic graph is exported instead."""
    c = lm.config
    if c.model_type not in _TYPES:
        return None, f"model type {c.model_type!r} (fused attention covers {', '.join(_TYPES)})"
    body = getattr(lm, "model", None)
    rope = getattr(body, "rotary_emb", None)
    layers = getattr(body, "layers", None)
    if rope is None or not layers or not hasattr(lm, "lm_head"):
        return None, "not the Llama module layout (model.layers, model.rotary_emb, lm_head)"
    if getattr(c, "use_sliding_window", False) or getattr(c, "pretraining_tp", 1) != 1:
        return None, "sliding-window attention or tensor-parallel slicing"
    heads = c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None) or heads
    d = getattr(c, "head_dim", None) or c.hidden_size // heads
    a = layers[0].self_attn
    if any(hasattr(a, n) for n in ("q_norm", "k_norm")) or abs(getattr(a, "scaling", d**-0.5) - d**-0.5) > 1e-9:
        return None, "attention with q/k norms or a custom softmax scale"
    inv = rope.inv_freq.float()
    if inv.numel() * 2 != d:
        return None, "rotary embedding over part of the head"
    n = min(int(getattr(c, "max_position_embeddings", MAX_POSITIONS)), MAX_POSITIONS)
    angles = torch.outer(torch.arange(n, dtype=torch.float32), inv)
    scale = float(getattr(rope, "attention_scaling", 1.0))
    return FusedDecoderStep(lm, angles.cos() * scale, angles.sin() * scale, heads, kv_heads).eval(), ""
