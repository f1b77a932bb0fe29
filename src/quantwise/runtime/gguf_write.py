"""Write a QuantizedModel of a llama-architecture causal LM to GGUF, so llama.cpp runs exactly the
weights quantwise computed (GPTQ/AWQ included).

A quantized layer is written in the GGUF block format whose definition is what quantwise computed:

- int8, symmetric, groups of 32 along the input, half-precision scales -> ``Q8_0``
  (per block: the scale as fp16, then 32 int8 values);
- int4, symmetric, groups of 32, half-precision scales -> ``Q4_0``
  (per block: the scale as fp16, then 16 bytes holding ``value + 8``: the block's first 16
  values in the low nibbles, the last 16 in the high nibbles);
- everything else (norms, layers quantized another way, ``fp16_scales`` off) -> ``F32`` of the
  exact values quantwise computes with, each listed with the reason.

Asymmetric int4 is not written as ``Q4_1``: that block stores its minimum as fp16, which
quantwise's integer zero point does not reproduce exactly. The tokenizer and every metadata key
are copied from the source GGUF; the tensors follow the source's names, order and shapes, and
the query/key rows are permuted the way llama.cpp's converter stores them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from quantwise.errors import Unsupported, UserError
from quantwise.numerics.granularity import PerGroup
from quantwise.quantized import LayerQuant

BLOCK = 32


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter's row order for query/key weights (rotary pairs interleaved per head)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def block_format(lq: LayerQuant | None) -> tuple[str, str | None]:
    """``(GGML type name, None)`` for a layer GGUF can hold exactly, else ``("F32", why)``."""
    if lq is None:
        return "F32", None
    g = lq.weight_granularity
    if lq.weight_qtype == "uint4":
        return (
            "F32",
            "asymmetric int4: GGUF's Q4_1 stores each block's minimum as fp16, which the integer zero point does not round-trip exactly",
        )
    if lq.weight_qtype not in ("int8", "int4"):
        return "F32", f"{lq.weight_qtype} weights have no exact GGUF block (Q8_0/Q4_0 are symmetric int8/int4)"
    if not isinstance(g, PerGroup) or g.size != BLOCK:
        return "F32", f"GGUF's Q8_0/Q4_0 hold groups of {BLOCK}; this layer has {g.to_dict()}"
    s = lq.weight_scale.to(torch.float32)
    if not torch.equal(s.to(torch.float16).to(torch.float32), s) or bool(torch.any(lq.weight_zero_point != 0)):
        return "F32", "its scales are not half precision (recipe key fp16_scales) or it has zero points"
    return ("Q8_0" if lq.weight_qtype == "int8" else "Q4_0"), None


def _blocks(lq: LayerQuant, kind: str) -> np.ndarray:
    """``(N, K / 32 * bytes_per_block)`` uint8 rows of ``kind`` blocks."""
    q = lq.weight_q.to(torch.int16).numpy()  # (N, K)
    n, k = q.shape
    d = lq.weight_scale.to(torch.float16).numpy().reshape(n, k // BLOCK, 1).view(np.uint8)  # (N, B, 2)
    qb = q.reshape(n, k // BLOCK, BLOCK)
    if kind == "Q8_0":
        vals = qb.astype(np.int8).view(np.uint8)
    else:
        u = (qb + 8).astype(np.uint8)
        vals = u[..., : BLOCK // 2] | (u[..., BLOCK // 2 :] << np.uint8(4))
    return np.concatenate([d, vals], axis=-1).reshape(n, -1)


def _hf_to_gguf(lm: Any, arch: Any) -> dict[str, str]:
    """``{GGUF tensor name: parameter name}`` for every parameter of ``lm``, in its order."""
    from gguf import get_tensor_name_map

    names = get_tensor_name_map(arch, lm.config.num_hidden_layers)
    out = {}
    for hf in lm.state_dict(keep_vars=True):
        base, _, suffix = hf.rpartition(".")
        g = names.get_name(base)
        if g is None:
            raise Unsupported(f"{hf} has no GGUF tensor name for this architecture; cannot write GGUF")
        out[f"{g}.{suffix}"] = hf
    return out


def _hparams(cfg: Any) -> dict[str, Any]:
    """The llama hyperparameters of the model itself (they override the source file's)."""
    heads = cfg.num_attention_heads
    rope = getattr(cfg, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(cfg, "rope_theta", None))
    out = {
        "block_count": cfg.num_hidden_layers,
        "context_length": cfg.max_position_embeddings,
        "embedding_length": cfg.hidden_size,
        "feed_forward_length": cfg.intermediate_size,
        "attention.head_count": heads,
        "attention.head_count_kv": cfg.num_key_value_heads,
        "attention.layer_norm_rms_epsilon": cfg.rms_norm_eps,
        "rope.dimension_count": getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
        "vocab_size": cfg.vocab_size,
    }
    if theta is not None:
        out["rope.freq_base"] = float(theta)
    return out


def _arch(reader: Any) -> str:
    field = reader.get_field("general.architecture")
    if field is None:
        raise UserError("the GGUF file names no general.architecture")
    return str(field.contents())


def write_gguf(model: nn.Module, layers: dict[str, LayerQuant], source: str | Path, out: Path) -> dict[str, Any]:
    """Write ``model`` (a ``CausalLMLogits`` over a llama-architecture LM, or the LM itself) with its
    quantized ``layers`` (a QuantizedModel's; empty for FP32) to ``out``.

    Returns the record: tensors per GGML type, and each F32 tensor of a quantized layer with why.
    """
    import gguf

    src = Path(source)
    if src.suffix.lower() != ".gguf":
        raise Unsupported(
            "GGUF output copies the tokenizer and metadata from a .gguf source: convert the model folder with "
            "llama.cpp's convert_hf_to_gguf.py first and pass that .gguf as --model"
        )
    reader = gguf.GGUFReader(str(src))
    arch_name = _arch(reader)
    if arch_name != "llama":
        raise Unsupported(f"GGUF output is written for the llama architecture only, not {arch_name!r}")
    lm: Any = getattr(model, "lm", model)
    arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch_name)
    to_hf = _hf_to_gguf(lm, arch)
    params = dict(lm.state_dict(keep_vars=True))
    by_storage: dict[
        int, LayerQuant
    ] = {}  # a layer's weight storage -> its LayerQuant (a tied embedding finds its LM head's)
    for name, layer in layers.items():
        w = getattr(model.get_submodule(name), "weight", None)
        if isinstance(w, torch.Tensor):
            by_storage[w.untyped_storage().data_ptr()] = layer
    cfg = lm.config
    heads = {"attn_q": cfg.num_attention_heads, "attn_k": cfg.num_key_value_heads}
    hparams = _hparams(cfg)
    tmp = out.with_name(f".{out.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch_name)
    counts: dict[str, int] = {}
    as_f32: dict[str, str] = {}
    for field in reader.fields.values():
        if field.name in ("general.architecture", "general.file_type") or field.name.startswith("GGUF."):
            continue  # the writer adds the architecture; the file type is set from what is written
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        key = field.name.removeprefix(f"{arch_name}.")
        value = hparams[key] if key in hparams else field.contents()
        writer.add_key_value(field.name, value, vtype, sub_type=sub)
    seen: set[int] = set()
    for g_name, hf in to_hf.items():
        p = params[hf]
        ptr = p.untyped_storage().data_ptr()
        if ptr in seen:  # a tied LM head: llama.cpp reuses token_embd when output.weight is absent
            continue
        seen.add(ptr)
        lq = by_storage.get(ptr) if p.dim() == 2 else None
        kind, why = block_format(lq)
        n_head = next((h for k, h in heads.items() if f".{k}." in g_name), None)
        if kind == "F32":
            data = p.detach().to(torch.float32).numpy()
            if n_head:
                data = _permute(data, n_head)
            writer.add_tensor(g_name, np.ascontiguousarray(data))
            if why:
                as_f32[g_name] = why
        else:
            assert lq is not None
            raw = _blocks(lq, kind)
            if n_head:
                raw = _permute(raw, n_head)
            writer.add_tensor(g_name, np.ascontiguousarray(raw), raw_dtype=gguf.GGMLQuantizationType[kind])
        counts[kind] = counts.get(kind, 0) + 1
    ftype = gguf.LlamaFileType
    writer.add_file_type(
        ftype.MOSTLY_Q4_0 if "Q4_0" in counts else ftype.MOSTLY_Q8_0 if "Q8_0" in counts else ftype.ALL_F32
    )
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"tensors": counts, "f32_layers": as_f32, "source": str(src)}


def gguf_weights(path: Path, lm: Any) -> dict[str, np.ndarray]:
    """Every tensor of a GGUF file dequantized by gguf-py, named and oriented as the model's parameters
    (query/key rows put back in the model's order). For round-trip checks."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    arch_name = _arch(reader)
    arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch_name)
    to_hf = _hf_to_gguf(lm, arch)
    cfg: Any = lm.config
    heads = {"attn_q": cfg.num_attention_heads, "attn_k": cfg.num_key_value_heads}
    out = {}
    for t in reader.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).reshape([int(x) for x in reversed(t.shape)])
        n_head = next((h for k, h in heads.items() if f".{k}." in t.name), None)
        if n_head:  # undo _permute
            w = w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
        out[to_hf[t.name]] = np.asarray(w, dtype=np.float32)
    return out


def check_source(task: Any) -> Path:
    """The task's source ``.gguf`` (GGUF output copies its tokenizer), or a one-line refusal."""
    src = task.info.get("source")
    if not src:
        raise UserError("GGUF output needs a causal-LM task loaded from a .gguf file (its tokenizer is copied)")
    return Path(src)
