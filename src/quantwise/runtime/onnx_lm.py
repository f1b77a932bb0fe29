"""A causal LM in ONNX Runtime: one *step* graph with a KV cache scores, times prefill and generates.

The step graph takes ``input_ids (B, S)`` and, per layer, ``past_key_i`` / ``past_value_i``
``(B, kv_heads, T, head_dim)``; it returns the logits and the ``present`` keys and values
``(B, kv_heads, T + S, head_dim)``. With an empty cache (T = 0) it is the full-sequence model:
scoring, the prefill timing, the memory child and the export re-check feed it empty past tensors
(``OrtRunner`` does, for inputs the task does not name). Each decode step is S = 1. One export per
trial: the graph's quantized layers are the lowered modules (``MatMulNBits``,
``DynamicQuantizeLinear`` + ``MatMulInteger`` ...), so scoring and generation run the same weights.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from quantwise.runtime.onnxrt import OrtRunner, export_onnx


def find_lm(module: nn.Module) -> Any:
    """The Hugging Face ``*ForCausalLM`` inside a lowered task module (None for other models)."""
    return next((m for m in module.modules() if hasattr(m, "generate") and hasattr(m, "config")), None)


class CausalLMStep(nn.Module):
    """``(input_ids, *past) -> (logits, *present)`` with the causal mask and positions built from T."""

    lm: Any

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        t, s = past[0].shape[2], input_ids.shape[1]
        cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)])
        dtype = past[0].dtype
        q = torch.arange(s).unsqueeze(1) + t  # absolute position of each new token
        k = torch.arange(t + s).unsqueeze(0)
        mask = torch.zeros(s, t + s, dtype=dtype).masked_fill(k > q, torch.finfo(dtype).min)[None, None]
        pos = (torch.arange(s) + t).unsqueeze(0)
        out = self.lm(input_ids=input_ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
        present = [x for layer in out.past_key_values.layers for x in (layer.keys, layer.values)]
        return (out.logits, *present)


def kv_shape(lm: Any) -> tuple[int, int, int]:
    """(layers, kv heads, head dim) of a decoder's cache."""
    c = lm.config
    heads = c.num_attention_heads
    return (
        c.num_hidden_layers,
        getattr(c, "num_key_value_heads", None) or heads,
        getattr(c, "head_dim", None) or c.hidden_size // heads,
    )


def export_step(lm: Any, path: Path) -> tuple[Path, list[str], str]:
    """Export the step graph: fused attention (``onnx_gqa``) where the decoder allows, else Hugging
    Face's own forward; the third value says which (``attention`` of the runner)."""
    from quantwise.runtime.onnx_gqa import fused_step

    n, kvh, d = kv_shape(lm)
    past_names = [f"past_{kind}_{i}" for i in range(n) for kind in ("key", "value")]
    present = [p.replace("past_", "present_") for p in past_names]
    example = (torch.tensor([[1, 2, 3], [4, 5, 6]]), *[torch.zeros(2, kvh, 2, d) for _ in past_names])
    axes: dict[str, dict[int, str]] = {"input_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}}
    axes.update({p: {0: "batch", 2: "past"} for p in past_names})
    axes.update({p: {0: "batch", 2: "total"} for p in present})
    fused, why = fused_step(lm)
    step = fused if fused is not None else CausalLMStep(lm).eval()
    export_onnx(step, example, path, ["input_ids", *past_names], axes, ["logits", *present])
    return path, past_names, "GroupQueryAttention (fused)" if fused is not None else f"decomposed: {why}"


class OrtLMRunner(OrtRunner):
    """Scores with the step graph and an empty cache; generates greedily feeding its KV cache back."""

    def __init__(
        self, path: Path, input_names: list[str], threads: int, past_names: list[str], kv: tuple[int, int, int]
    ) -> None:
        super().__init__(path, input_names, threads)
        self.past_names = past_names
        self.kv = kv
        self.attention = ""  # how the step graph computes attention (export_step)

    def generate(self, prompt: torch.Tensor, new_tokens: int, times: list[float] | None = None) -> list[int]:
        """Greedy tokens through the step graph, feeding its KV cache back; ``times`` gets each token's arrival."""
        _, kvh, d = self.kv
        past = {p: np.zeros((1, kvh, 0, d), dtype=np.float32) for p in self.past_names}
        ids = prompt.numpy().astype(np.int64)
        out: list[int] = []
        for _ in range(new_tokens):
            res = self.session.run(None, {"input_ids": ids, **past})
            nxt = int(np.argmax(res[0][0, -1]))
            out.append(nxt)
            if times is not None:
                times.append(time.perf_counter())
            past = dict(zip(self.past_names, res[1:], strict=True))
            ids = np.array([[nxt]], dtype=np.int64)
        return out


def lm_runner(module: nn.Module, path: Path, input_names: list[str], threads: int) -> OrtRunner | None:
    """The step graph exported to ``path`` and its ``OrtLMRunner`` when ``module`` holds a float32
    causal LM taking ``input_ids`` alone, else None (the caller exports the full-sequence graph)."""
    lm = find_lm(module)
    if lm is None or input_names != ["input_ids"] or lm.get_input_embeddings().weight.dtype != torch.float32:
        return None
    _, past, attention = export_step(lm, path)
    runner = OrtLMRunner(path, input_names, threads, past, kv_shape(lm))
    runner.attention = attention
    return runner
