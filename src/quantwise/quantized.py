"""The QuantizedModel: the single source of truth every runtime lowers.

It holds the float model (with BatchNorm folded where the recipe folded it) and, per
quantized layer, the integer weights and every quantization parameter. Runtimes read
these; they never recompute them. Saved as ``model.safetensors`` plus ``quantwise.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch
import torch.fx
from safetensors.torch import load_file, save_file
from torch import nn

from quantwise.errors import UserError
from quantwise.nnutil import canonicalize, fold_batchnorm_structure, set_module
from quantwise.numerics import dequantize, get_qtype, pack_int4, quantize_bias, unpack_int4
from quantwise.numerics.granularity import Granularity, granularity_from_dict
from quantwise.outdir import atomic_dir
from quantwise.recipes import Recipe, recipe_from_dict

FORMAT_VERSION = 1


class LayerKind(StrEnum):
    """What a quantized layer computes."""

    LINEAR = "linear"
    CONV2D = "conv2d"
    EMBEDDING = "embedding"


class QuantMode(StrEnum):
    """How a layer's activations are treated: float (weight-only), quantized at run time, or calibrated."""

    WEIGHT_ONLY = "weight_only"
    DYNAMIC = "dynamic"
    STATIC = "static"


class ActGranularity(StrEnum):
    """Dynamic activations: one scale per tensor, per token (row of the flattened input), or per
    token and weight block (int8 compute in a weight-only layer)."""

    PER_TENSOR = "per-tensor"
    PER_TOKEN = "per-token"
    # a weight-only layer whose input is quantized to int8 per row and weight block (symmetric,
    # max|x|/127, round half to even) so the dot products are int8: MatMulNBits accuracy_level=4
    PER_BLOCK = "per-block"


def _enum(cls: type[StrEnum], value: Any, what: str) -> Any:
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(m.value for m in cls)
        raise UserError(f"a quantized layer's {what} must be one of {allowed}, got {value!r}") from None


@dataclass
class ActQuant:
    """Static activation quantization: one scale and zero point for a tensor."""

    scale: float
    zero_point: int
    qtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "zero_point": self.zero_point, "qtype": self.qtype}


@dataclass
class LayerQuant:
    """Quantization of one Linear or Conv2d layer.

    Attributes:
        kind: ``linear``, ``conv2d`` or ``embedding``.
        mode: ``weight_only``, ``dynamic`` or ``static``.
        weight_q: integer weight values, the layer's weight shape (int4 held in int8/uint8).
        weight_scale: float32 scales, one per block of ``weight_granularity``.
        weight_zero_point: int32 zero points, same shape as the scales.
        weight_qtype: name of the weight type (``int8``, ``int4``, ``uint4``, or ``fp16``: weights
            stored in half precision, computed in float32; scale 1 and zero point 0).
        weight_granularity: which weight elements share a scale.
        input: static input quantization (``static`` mode only).
        output: static output quantization, applied after a fused ReLU (``static`` only).
        fused_relu: name of the ReLU (or ReLU6) module folded into this layer's output, if any.
        fused_act: what that module computes: ``relu`` (``max(y, 0)``) or ``relu6`` (``min(max(y, 0), 6)``).
        activation_shared: the activation module is also called elsewhere (torchvision's ResNet calls
            one ``self.relu`` twice per block): it stays in the model, where applying it again to the
            layer's already-activated output is exact, instead of becoming ``nn.Identity``.
    """

    kind: LayerKind
    mode: QuantMode
    weight_q: torch.Tensor
    weight_scale: torch.Tensor
    weight_zero_point: torch.Tensor
    weight_qtype: str
    weight_granularity: Granularity
    input: ActQuant | None = None
    output: ActQuant | None = None
    fused_relu: str | None = None
    fused_act: str = "relu"
    activation_shared: bool = False
    dynamic_granularity: ActGranularity = ActGranularity.PER_TENSOR
    bias_q: torch.Tensor | None = None  # static layers: the int32 bias on the grid s_in * s_w, (N,)
    bias_scale: torch.Tensor | None = None  # its scale per output channel, float32 (N,)

    def __post_init__(self) -> None:  # strings from a saved file or a caller become the enums
        self.kind = _enum(LayerKind, self.kind, "kind")
        self.mode = _enum(QuantMode, self.mode, "mode")
        self.dynamic_granularity = _enum(ActGranularity, self.dynamic_granularity, "dynamic granularity")
        if self.fused_act not in ("relu", "relu6"):
            raise UserError(f"fused activation must be relu or relu6, got {self.fused_act!r}")

    @property
    def activation(self) -> str | None:
        """The fused activation (``relu``/``relu6``), None when none is fused."""
        return self.fused_act if self.fused_relu is not None else None

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight the runtimes compute with: ``(q - zp) * scale`` (fp16 weights: cast up)."""
        if get_qtype(self.weight_qtype).is_float:
            return self.weight_q.to(torch.float32)
        return dequantize(self.weight_q, self.weight_scale, self.weight_zero_point, self.weight_granularity)

    def meta(self) -> dict[str, Any]:
        return {
            "kind": LayerKind(self.kind).value,
            "mode": QuantMode(self.mode).value,
            "weight_qtype": self.weight_qtype,
            "weight_shape": list(self.weight_q.shape),
            "weight_granularity": self.weight_granularity.to_dict(),
            "input": self.input.to_dict() if self.input else None,
            "output": self.output.to_dict() if self.output else None,
            "fused_relu": self.fused_relu,
            "fused_act": self.fused_act,
            "activation_shared": self.activation_shared,
            "dynamic_granularity": ActGranularity(self.dynamic_granularity).value,
            "bias_int32": self.bias_q is not None,
        }

    def set_int32_bias(self, bias: torch.Tensor | None) -> None:
        """Store the int32 bias of a static layer from its float bias (zeros when it has none)."""
        if self.mode != "static" or self.input is None:
            return
        n = self.weight_q.shape[0]
        b = bias.detach() if bias is not None else torch.zeros(n)
        self.bias_q, self.bias_scale = quantize_bias(b, self.input.scale, self.weight_scale)


@dataclass
class QuantizedModel:
    """A float model plus the quantization of its layers.

    Attributes:
        model: the float model (eval mode; BatchNorm folded into convs listed in ``folded``).
        recipe: the recipe that made it.
        layers: quantized layers by module name.
        skipped: layers left in float, with the reason.
        folded: ``{conv_name: bn_name}`` BatchNorm layers folded into convolutions.
        cast: ``fp16``/``bf16`` when the whole model is cast, else None.
        info: free-form facts (time to quantize, calibration samples ...).
        plan: the integer-only program of a fixed-point model
            (:class:`~quantwise.fixedpoint.plan.FixedPointPlan`), else None.
        activations: tensors quantized between layers, by the ``torch.fx`` node that makes them
            (a residual add, after the ReLU that follows it; a max-pool of a quantized tensor, on
            its input's grid): every lowering puts ``quantize -> dequantize`` there, so a runtime
            runs the add and the pool in int8 (see :mod:`quantwise.transform.act_points`).
    """

    model: nn.Module
    recipe: Recipe
    layers: dict[str, LayerQuant] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    folded: dict[str, str] = field(default_factory=dict)
    cast: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    plan: Any = None
    activations: dict[str, ActQuant] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The int32 bias of every static layer is part of the contract: computed once, here, from
        # the (BatchNorm-folded) float bias, saved with the model, read by every lowering.
        for name, lq in self.layers.items():
            if lq.mode == "static" and lq.input is not None and lq.bias_q is None:
                lq.set_int32_bias(getattr(self.model.get_submodule(name), "bias", None))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``model.safetensors`` and ``quantwise.json`` into directory ``path`` atomically."""
        path = Path(path)
        with atomic_dir(path) as tmp:
            tensors: dict[str, torch.Tensor] = {}
            quantized_params = {f"{n}.weight" for n in self.layers}
            aliases: dict[str, str] = {}  # tied weights (an LM head sharing the embedding) are stored once
            sd = self.model.state_dict()
            # a quantized weight is the first of its ties: an embedding tied to a quantized head is
            # the head's dequantized table, never a second, float copy
            first_of = {_ident(sd[k]): k for k in quantized_params if k in sd}
            for k, v in sd.items():
                ident = _ident(v)
                if ident in first_of and first_of[ident] != k and v.numel():
                    aliases[k] = first_of[ident]
                    continue
                first_of.setdefault(ident, k)
                if k not in quantized_params:
                    if self.cast and v.is_floating_point():
                        v = v.to(torch.float16 if self.cast == "fp16" else torch.bfloat16)
                    tensors[f"float::{k}"] = v.detach().contiguous()
            for name, lq in self.layers.items():
                qt = get_qtype(lq.weight_qtype)
                wq = _pack4(lq.weight_q) if qt.bits == 4 else lq.weight_q
                tensors[f"q::{name}::weight_q"] = wq.contiguous()
                tensors[f"q::{name}::weight_scale"] = lq.weight_scale.contiguous()
                tensors[f"q::{name}::weight_zero_point"] = lq.weight_zero_point.contiguous()
                if lq.bias_q is not None and lq.bias_scale is not None:
                    tensors[f"q::{name}::bias_q"] = lq.bias_q.contiguous()
                    tensors[f"q::{name}::bias_scale"] = lq.bias_scale.contiguous()
            if self.plan is not None:
                tensors.update(self.plan.tensors())
            save_file(tensors, str(tmp / "model.safetensors"))
            meta = {
                "format_version": FORMAT_VERSION,
                "recipe": self.recipe.to_dict(),
                "layers": {n: lq.meta() for n, lq in self.layers.items()},
                "skipped": self.skipped,
                "folded": self.folded,
                "cast": self.cast,
                "info": self.info,
                "plan": self.plan.meta() if self.plan is not None else None,
                "aliases": aliases,
                "activations": {n: a.to_dict() for n, a in self.activations.items()},
            }
            (tmp / "quantwise.json").write_text(json.dumps(meta, indent=2))
        return path

    @staticmethod
    def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
        """The checked ``quantwise.json`` of a saved QuantizedModel folder (a clear error if it is not one)."""
        path = Path(path)
        meta_file = path / "quantwise.json"
        if not meta_file.exists():
            raise UserError(
                f"{path} is not a saved quantwise model (no quantwise.json): pass the folder `quantwise quantize --out` wrote"
            )
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise UserError(f"{meta_file} is not valid JSON: it is corrupt; save the model again") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise UserError(
                f"{path}: format version {meta.get('format_version')} is not supported (expected {FORMAT_VERSION})"
            )
        return meta

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: nn.Module, meta: dict[str, Any] | None = None) -> QuantizedModel:
        """Load a saved QuantizedModel onto ``model``, a fresh copy of the same float architecture
        (``meta``: its ``read_meta``, when the caller has read it already)."""
        path = Path(path)
        meta = meta if meta is not None else cls.read_meta(path)
        try:
            tensors = load_file(str(path / "model.safetensors"))
        except Exception as e:
            raise UserError(
                f"{path / 'model.safetensors'} cannot be read ({type(e).__name__}): it is truncated or corrupt; "
                "save the model again"
            ) from None
        if "captured" in meta.get("info", {}) and not isinstance(model, torch.fx.GraphModule):
            raise UserError(
                f"{path} was quantized on the model captured with torch.export (it has Conv2d/Linear subclasses "
                "with their own forward): pass quantwise.transform.capture.capture(model, example)[0] as the model"
            )
        canonicalize(model)  # the saved model holds transformers Conv1D layers as nn.Linear
        fold_batchnorm_structure(model, meta["folded"])
        float_sd = {k[len("float::") :]: v for k, v in tensors.items() if k.startswith("float::")}
        for k, first in meta.get("aliases", {}).items():
            if first in float_sd:
                float_sd[k] = float_sd[first]
        model.load_state_dict(float_sd, strict=False)
        layers = {}
        for name, m in meta["layers"].items():
            qt = get_qtype(m["weight_qtype"])
            wq = tensors[f"q::{name}::weight_q"]
            if qt.bits == 4:
                n = int(torch.tensor(m["weight_shape"]).prod())
                wq = unpack_int4(wq, qt.signed)[:n].reshape(m["weight_shape"])
            lq = LayerQuant(
                kind=_enum(LayerKind, m["kind"], "kind"),
                mode=_enum(QuantMode, m["mode"], "mode"),
                weight_q=wq,
                weight_scale=tensors[f"q::{name}::weight_scale"],
                weight_zero_point=tensors[f"q::{name}::weight_zero_point"],
                weight_qtype=m["weight_qtype"],
                weight_granularity=granularity_from_dict(m["weight_granularity"]),
                input=ActQuant(**m["input"]) if m["input"] else None,
                output=ActQuant(**m["output"]) if m["output"] else None,
                fused_relu=m["fused_relu"],
                fused_act=m.get("fused_act", "relu"),
                activation_shared=m.get("activation_shared", False),
                dynamic_granularity=_enum(ActGranularity, m.get("dynamic_granularity", "per-tensor"), "granularity"),
                bias_q=tensors.get(f"q::{name}::bias_q"),
                bias_scale=tensors.get(f"q::{name}::bias_scale"),
            )
            layers[name] = lq
        if not getattr(model, "is_onnx_graph", False):  # an ONNX graph keeps its float weights in the graph
            write_back(model, layers)  # the float copy of a quantized weight is its dequantized value
            _retie(model, {k: first for k, first in meta.get("aliases", {}).items() if first not in float_sd})
        plan = None
        if meta.get("plan"):
            from quantwise.fixedpoint.plan import FixedPointPlan

            plan = FixedPointPlan.from_saved(
                meta["plan"], tensors, {n: (lq.weight_q, lq.weight_scale) for n, lq in layers.items()}
            )
        return cls(
            model=model.eval(),
            plan=plan,
            recipe=recipe_from_dict(meta["recipe"]),
            layers=layers,
            skipped=meta["skipped"],
            folded=meta["folded"],
            cast=meta["cast"],
            info=meta["info"],
            activations={n: ActQuant(**a) for n, a in meta.get("activations", {}).items()},
        )


def apply_activation(y: torch.Tensor, act: str | None) -> torch.Tensor:
    """A fused activation on a layer's float output: ``relu``, ``relu6`` or None (the identity)."""
    if act is None:
        return y
    return torch.relu(y) if act == "relu" else torch.clamp(y, 0.0, 6.0)


def drop_fused_activations(model: nn.Module, layers: dict[str, LayerQuant]) -> None:
    """Each activation fused into a layer becomes ``nn.Identity`` in a lowered model, unless it is
    shared with other call sites (it stays: applying it again is exact)."""
    for lq in layers.values():
        if lq.fused_relu and not lq.activation_shared:
            set_module(model, lq.fused_relu, nn.Identity())


def _ident(v: torch.Tensor) -> tuple[int, int, tuple[int, ...]]:
    return (v.untyped_storage().data_ptr(), int(v.storage_offset()), tuple(v.shape))


def _retie(model: nn.Module, aliases: dict[str, str]) -> None:
    """Tensors saved as ties of a quantized weight take its dequantized value (already so when the
    fresh model ties them itself)."""
    sd = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for k, first in aliases.items():
            if _ident(sd[k]) != _ident(sd[first]):
                sd[k].copy_(sd[first])


def write_back(model: nn.Module, layers: dict[str, LayerQuant]) -> None:
    """Store each layer's dequantized weight in the float model, so it computes what was quantized."""
    with torch.no_grad():
        for name, lq in layers.items():
            weight = model.get_submodule(name).weight
            assert isinstance(weight, torch.Tensor)
            weight.copy_(lq.dequantized_weight().reshape(weight.shape))


def _pack4(q: torch.Tensor) -> torch.Tensor:
    """Flatten and pack two 4-bit values per byte (padded with one zero if the count is odd)."""
    flat = q.reshape(-1)
    if flat.numel() % 2:
        flat = torch.cat([flat, torch.zeros(1, dtype=flat.dtype)])
    return pack_int4(flat)


def artifact_size(path: str | os.PathLike[str]) -> int:
    """Bytes on disk of a file or of every file under a directory."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
