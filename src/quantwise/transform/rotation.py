"""Rotations that spread a decoder's activation outliers across channels before quantization
(QuaRot-style); in float they leave the model's outputs unchanged (checked, else refused).

Per-token INT8 activations lose most where one channel is tens of times larger than the rest
(SmolLM2's MLP inputs: 48x to 110x the median channel, ``quantwise explain``): that row's step
is set by the outlier and the other channels round to a few levels. An orthogonal rotation R
(``x -> x R``, with the weights reading ``x`` turned by the same R) keeps every output, and
spreads an outlier over all channels it mixes. Three rotations, for a Llama-style decoder:

- **residual stream**: one random orthogonal Q (seeded) on the hidden state between blocks. Each
  RMSNorm's scale is folded into the Linears reading it (the norm's weight becomes ones, and an
  RMSNorm commutes with Q), those Linears read ``x Q`` (``W <- W diag(g) Q``), the Linears
  writing the residual write ``x Q`` (``W <- Q^T W``, ``b <- b Q``), and the embedding table's
  rows are turned (``E <- E Q``). The LM head reads the final norm's output turned too
  (``W <- W Q``): the norm's scale stays in the graph as one small float MatMul by
  ``Q^T diag(g) Q`` after it, so a head tied to the embedding is the same turned table;
- **values**: a Hadamard matrix per attention head on v_proj's outputs and o_proj's inputs,
  folded into both weights (exact under grouped-query attention: each query head reads its KV
  head's values);
- **MLP down-projection input**: a block-diagonal Hadamard (blocks of up to 128) computed in the
  graph before down_proj, its transpose folded into down_proj's weight (one small float MatMul).

The rotated model is a different float model with the same outputs: GGUF (llama.cpp) cannot hold
the online rotations, so rotated recipes run in PyTorch and ONNX Runtime.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from quantwise.errors import Unsupported
from quantwise.transform.registry import Batch
from quantwise.transform.smoothing import check_unchanged, reference_output

SEED = 0
DOWN_BLOCK = 128  # the down-projection's online Hadamard blocks (SmolLM2 per-token W8A8: 512 measured no better)


class Rotation(nn.Module):
    """``x -> x R`` with R block-diagonal: copies of one ``(b, b)`` matrix along the last axis (an
    orthogonal one, or the final norm's scale in turned coordinates)."""

    r: torch.Tensor

    def __init__(self, r: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("r", r.to(torch.float32).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.r.shape[0]
        if x.shape[-1] == b:
            return x @ self.r.to(x.dtype)
        return (x.unflatten(-1, (-1, b)) @ self.r.to(x.dtype)).flatten(-2)


class RotatedOutput(nn.Module):
    """``module`` with its output rotated (the final norm)."""

    def __init__(self, module: nn.Module, r: torch.Tensor) -> None:
        super().__init__()
        self.module, self.rotation = module, Rotation(r)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.rotation(self.module(*args, **kwargs))


class RotatedInput(nn.Module):
    """``module`` reading a rotated input (the down-projection)."""

    def __init__(self, module: nn.Module, r: torch.Tensor) -> None:
        super().__init__()
        self.module, self.rotation = module, Rotation(r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(self.rotation(x))


def random_orthogonal(n: int, seed: int) -> torch.Tensor:
    """A random orthogonal ``(n, n)`` float64 matrix (Haar-distributed: QR of a Gaussian, signs fixed)."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def hadamard(n: int, seed: int) -> torch.Tensor:
    """An orthonormal ``(n, n)`` float64 Hadamard matrix (Sylvester's, n a power of two) with random column signs."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    sign = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(seed)).double() * 2 - 1
    return h * sign / math.sqrt(n)


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _rms_norm(norm: object) -> bool:
    return type(norm).__name__.endswith("RMSNorm") and getattr(norm, "bias", None) is None


def decoder_of(model: nn.Module) -> tuple[Any, Any]:
    """The ``*ForCausalLM`` in ``model`` and its decoder body, or Unsupported saying what is missing."""
    lm = next((m for m in model.modules() if hasattr(m, "config") and hasattr(m, "get_input_embeddings")), None)
    body = getattr(lm, "model", None)
    layers = getattr(body, "layers", None)
    if lm is None or body is None or not layers:
        raise Unsupported(
            "rotation needs a Llama-style decoder (model.layers of a *ForCausalLM); use the recipe without it"
        )
    if not isinstance(getattr(body, "embed_tokens", None), nn.Embedding):
        raise Unsupported("rotation: the decoder has no embed_tokens (nn.Embedding); use the recipe without it")
    if not _rms_norm(getattr(body, "norm", None)):
        raise Unsupported(
            f"rotation: the final norm is {type(getattr(body, 'norm', None)).__name__}, not an RMSNorm; "
            "use the recipe without it"
        )
    if not isinstance(lm.get_output_embeddings(), nn.Linear):  # type: ignore[operator]
        raise Unsupported("rotation: the LM head is not an nn.Linear; use the recipe without it")
    for i, layer in enumerate(layers):
        a, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        parts = [getattr(a, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        parts += [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
        norms = [getattr(layer, n, None) for n in ("input_layernorm", "post_attention_layernorm")]
        if any(type(p) is not nn.Linear for p in parts):
            raise Unsupported(
                f"rotation: block {i} is not norm -> q/k/v/o nn.Linear attention -> norm -> gate/up/down nn.Linear MLP "
                "(the Llama layout); use the recipe without it"
            )
        for norm in norms:
            if not _rms_norm(norm):
                raise Unsupported(
                    f"rotation: block {i}'s norms are {type(norm).__name__}, not an RMSNorm (a norm that subtracts "
                    "the mean does not commute with a rotation); use the recipe without it"
                )
    return lm, body


def _read(lin: nn.Linear, r: torch.Tensor) -> None:
    """``lin`` now reads ``x R`` and computes what it did on ``x``."""
    lin.weight.data = (lin.weight.data.double() @ r).to(lin.weight.dtype)


def _write(lin: nn.Linear, r: torch.Tensor) -> None:
    """``lin`` now writes ``y R``."""
    lin.weight.data = (r.T @ lin.weight.data.double()).to(lin.weight.dtype)
    if lin.bias is not None:
        lin.bias.data = (lin.bias.data.double() @ r).to(lin.bias.dtype)


def _fold_norm(norm: nn.Module, linears: Sequence[nn.Linear]) -> None:
    g = norm.weight.data.double()  # type: ignore[union-attr,operator]
    for lin in linears:
        lin.weight.data = (lin.weight.data.double() * g).to(lin.weight.dtype)  # type: ignore[operator]
    norm.weight.data.fill_(1.0)  # type: ignore[union-attr,operator]


def rotate_decoder(model: nn.Module, calib: Sequence[Batch]) -> dict[str, Any]:
    """Rotate the Llama-style decoder inside ``model`` in place (module docstring) and return what
    was done for the record; Unsupported when it is not one or its outputs moved."""
    if not calib:
        raise Unsupported("rotation needs calibration data (one batch checks the float model is unchanged)")
    lm, body = decoder_of(model)
    before = reference_output(model, calib[0])
    c = lm.config
    d = body.embed_tokens.embedding_dim
    heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or d // heads
    q = random_orthogonal(d, SEED)
    not_rotated: dict[str, str] = {}
    h_head = hadamard(head_dim, SEED) if _power_of_two(head_dim) else None
    if h_head is None:
        not_rotated["values"] = f"head size {head_dim} is not a power of two (no Sylvester Hadamard matrix)"
    with torch.no_grad():
        for layer in body.layers:
            a, mlp = layer.self_attn, layer.mlp
            _fold_norm(layer.input_layernorm, [a.q_proj, a.k_proj, a.v_proj])
            _fold_norm(layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj])
            for lin in (a.q_proj, a.k_proj, a.v_proj, mlp.gate_proj, mlp.up_proj):
                _read(lin, q)
            if h_head is not None:
                _write(a.v_proj, torch.block_diag(*[h_head] * (a.v_proj.out_features // head_dim)))
                _read(a.o_proj, torch.block_diag(*[h_head] * (a.o_proj.in_features // head_dim)))
            _write(a.o_proj, q)
            down = mlp.down_proj
            block = math.gcd(down.in_features, DOWN_BLOCK)
            if block >= 16:
                h = hadamard(block, SEED + 1)
                _read(down, torch.block_diag(*[h] * (down.in_features // block)))
                mlp.down_proj = RotatedInput(down, h)
            else:
                not_rotated["down_proj"] = f"its {down.in_features} inputs have no power-of-two block of 16 or more"
            _write(down, q)
        emb, head = body.embed_tokens, lm.get_output_embeddings()
        emb.weight.data = (emb.weight.data.double() @ q).to(emb.weight.dtype)
        if head.weight is not emb.weight:  # a tied head is already turned
            _read(head, q)
        g = body.norm.weight.data.double()
        body.norm.weight.data.fill_(1.0)
        body.norm = RotatedOutput(body.norm, q.T @ torch.diag(g) @ q)
    why = "a norm is not x / rms(x) * weight, or a block feeds more than its Linears"
    diff = check_unchanged(model, before, calib[0], "rotation", why, "turning the weights")
    return {
        "residual": f"random orthogonal {d}x{d} (seed {SEED}), the embedding table and LM head turned with it",
        "values": "Hadamard per head" if h_head is not None else None,
        "down_proj_block": block if block >= 16 else None,
        "not_rotated": not_rotated,
        "float_output_change": diff,
    }
