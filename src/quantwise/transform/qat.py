"""Quantization-aware training: ``prepare_qat`` and ``convert_qat``.

``prepare_qat`` starts where post-training quantization ends: it runs the matching PTQ handler
(static INT8/W4A8 for ``activations=true``, weight-only otherwise) on the calibration data and
initialises every fake quantizer from it. Each quantized Conv2d/Linear becomes a
:class:`QATLayer` that fake-quantizes its input, weights (and int32 bias), and output, with
straight-through gradients; with ``lsq`` the step sizes are parameters trained by LSQ. A Conv2d
followed by BatchNorm keeps the BatchNorm inside the layer: its weights are fake-quantized
*folded* (running statistics), and while the statistics are not frozen the output is rescaled to
batch statistics and the running statistics are updated, as in Jacob et al. (2018).

``convert_qat`` folds, quantizes with the trained step sizes and returns the same
:class:`~quantwise.quantized.QuantizedModel` PTQ produces, so every runtime lowers it unchanged.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from quantwise.errors import UserError
from quantwise.nnutil import set_module
from quantwise.numerics import PerChannel, PerGroup, get_qtype, quantize, quantize_bias
from quantwise.numerics.affine import fake_quantize_lsq
from quantwise.numerics.granularity import expand_param
from quantwise.quantized import (
    ActQuant,
    LayerQuant,
    QuantizedModel,
    apply_activation,
    drop_fused_activations,
    write_back,
)
from quantwise.recipes import QATRecipe, StaticInt8Recipe, WeightOnlyRecipe
from quantwise.transform.registry import Batch
from quantwise.transform.schemes import quantize_embeddings

EPS = 1e-8


class ActFQ(nn.Module):
    """Fake quantization of an activation on a fixed integer grid, scale fixed or learned (LSQ)."""

    def __init__(self, a: ActQuant, lsq: bool) -> None:
        super().__init__()
        qt = get_qtype(a.qtype)
        self.qmin, self.qmax, self.qtype = qt.qmin, qt.qmax, a.qtype
        s = torch.tensor(float(a.scale))
        self.scale = nn.Parameter(s) if lsq else nn.Parameter(s, requires_grad=False)
        self.register_buffer("zero_point", torch.tensor(float(a.zero_point)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = 1.0 / math.sqrt(max(x[0].numel(), 1) * self.qmax)
        return fake_quantize_lsq(x, self.scale.abs().clamp(min=EPS), self.zero_point, self.qmin, self.qmax, g)

    def act_quant(self) -> ActQuant:
        return ActQuant(float(self.scale.detach().abs().clamp(min=EPS)), int(self.zero_point), self.qtype)


class QATLayer(nn.Module):
    """A Conv2d or Linear (with an optional BatchNorm folded in) trained under fake quantization."""

    def __init__(
        self,
        layer: nn.Conv2d | nn.Linear,
        lq: LayerQuant,
        bn: nn.BatchNorm2d | None,
        lsq: bool,
        seven_bit: bool = False,
    ) -> None:
        super().__init__()
        self.layer, self.bn = layer, bn
        self.kind, self.mode = lq.kind, lq.mode
        self.qtype = get_qtype(lq.weight_qtype)
        # the weight grid: the type's, or [-63, 63] where the PTQ start kept int8 weights within 7 bits
        self.wmin, self.wmax = (-63, 63) if seven_bit else (self.qtype.qmin, self.qtype.qmax)
        self.granularity = lq.weight_granularity
        self.fused_relu = lq.fused_relu
        self.act = lq.activation
        self.lsq = lsq
        init = lq.weight_scale.detach().to(torch.float32).clone()
        self.w_scale = nn.Parameter(init, requires_grad=lsq)  # trained only with LSQ
        self.input_fq = ActFQ(lq.input, lsq) if lq.input else None
        self.output_fq = ActFQ(lq.output, lsq) if lq.output else None
        self.bn_frozen = bn is None

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias with the BatchNorm folded in (running statistics)."""
        w = self.layer.weight
        b = self.layer.bias if self.layer.bias is not None else torch.zeros(w.shape[0], device=w.device)
        if self.bn is None:
            return w, b
        inv = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)  # (C,)
        return w * inv.reshape(-1, *([1] * (w.dim() - 1))), (b - self.bn.running_mean) * inv + self.bn.bias

    def weight_scale(self, w: torch.Tensor) -> torch.Tensor:
        """Learned step sizes (LSQ), or min-max of the current weights (fixed ranges)."""
        if self.lsq:
            return self.w_scale.abs().clamp(min=EPS)
        g = self.granularity
        flat = w.detach().reshape(w.shape[0], -1)
        if isinstance(g, PerGroup):
            amax = flat.reshape(w.shape[0], -1, g.size).abs().amax(-1)  # (N, K/g)
        elif isinstance(g, PerChannel):
            amax = flat.abs().amax(1)
        else:
            amax = flat.abs().amax()
        return amax.clamp(min=EPS) / ((self.wmax - self.wmin) / 2)  # as choose_qparams, symmetric

    def _fq_weight(self, w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        w2 = w.reshape(w.shape[0], -1) if isinstance(self.granularity, PerGroup) else w  # groups run along the input
        se = expand_param(s, w2, self.granularity)
        g = 1.0 / math.sqrt(w[0].numel() * self.wmax)
        out = fake_quantize_lsq(w2, se, torch.zeros((), device=w.device), self.wmin, self.wmax, g)
        return out.reshape(w.shape)

    def _op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        if self.kind == "conv2d":
            c = self.layer
            return F.conv2d(x, w, b, c.stride, c.padding, c.dilation, c.groups)
        return F.linear(x, w, b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_fq is not None:
            x = self.input_fq(x)
        w, b = self.folded()
        s = self.weight_scale(w)
        wq = self._fq_weight(w, s)
        if self.bn is not None and self.training and not self.bn_frozen:
            y = self._batch_norm_train(x, wq)
        else:
            if self.input_fq is not None:  # int32 bias on the grid s_in * s_w, as the runtimes store it
                bq, sb = quantize_bias(b, self.input_fq.scale.detach().abs().clamp(min=EPS), s.detach())
                b = b + ((bq.double() * sb.double()).float() - b).detach()
            y = self._op(x, wq, b)
        y = apply_activation(y, self.act)
        if self.output_fq is not None:
            y = self.output_fq(y)
        return y

    def _batch_norm_train(self, x: torch.Tensor, wq: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        assert bn is not None
        inv_run = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C,)
        shape = (1, -1, 1, 1)
        y = self._op(x, wq, None) / inv_run.reshape(shape)  # conv with the unfolded quantized weight
        if self.layer.bias is not None:
            y = y + self.layer.bias.reshape(shape)
        mean, var = y.mean(dim=(0, 2, 3)), y.var(dim=(0, 2, 3), unbiased=False)
        with torch.no_grad():
            n = y.numel() / y.shape[1]
            m = bn.momentum if bn.momentum is not None else 0.1
            bn.running_mean.mul_(1 - m).add_(m * mean.detach())
            bn.running_var.mul_(1 - m).add_(m * var.detach() * n / max(n - 1, 1))
            bn.num_batches_tracked += 1
        return (y - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + bn.eps) * bn.weight.reshape(
            shape
        ) + bn.bias.reshape(shape)


@dataclass
class QATPrepared:
    """A model ready to train: ``model`` is an ordinary ``nn.Module`` with :class:`QATLayer` inside.

    Train ``model`` with any loop; then :func:`convert_qat` turns it into a QuantizedModel.
    """

    model: nn.Module
    recipe: QATRecipe
    skipped: dict[str, str] = field(default_factory=dict)
    info: dict[str, object] = field(default_factory=dict)

    def layers(self) -> dict[str, QATLayer]:
        return {n: m for n, m in self.model.named_modules() if isinstance(m, QATLayer)}

    def set_step(self, step: int) -> None:
        """Freeze BatchNorm statistics once ``step`` reaches the recipe's ``freeze_bn_steps``."""
        for m in self.layers().values():
            if m.bn is not None:
                m.bn_frozen = step >= self.recipe.freeze_bn_steps


def ptq_recipe(recipe: QATRecipe) -> StaticInt8Recipe | WeightOnlyRecipe:
    """The post-training recipe QAT starts from."""
    common = {
        "include": recipe.include,
        "exclude": recipe.exclude,
        "module_types": recipe.module_types,
        "embeddings": False,
    }
    if recipe.activations:
        return StaticInt8Recipe(
            calibration=recipe.calibration,
            per_channel=recipe.per_channel,
            weight_bits=recipe.weight_bits,
            quantize_outputs=recipe.quantize_outputs,
            **common,
        )
    # QAT learns a positive step size: it starts from the max|w| / 7.5 grid, not the signed full range
    return WeightOnlyRecipe(bits=recipe.weight_bits, group_size=recipe.group_size, full_range=False, **common)


def prepare_qat(model: nn.Module, recipe: QATRecipe, calibration: Sequence[Batch]) -> QATPrepared:
    """A trainable copy of ``model`` with fake quantization initialised from PTQ on ``calibration``."""
    from quantwise.transform.quantize import quantize_model as quantize

    if not any(p.requires_grad for p in model.parameters()):
        raise UserError("the model has no trainable parameters: quantization-aware training needs parameters to train")
    base = ptq_recipe(recipe)
    ptq = quantize(model, base, calibration if recipe.activations else None)
    qat = copy.deepcopy(model)
    for p in qat.parameters():
        p.requires_grad_(True)
    bn_of = {conv: bn for conv, bn in ptq.folded.items() if conv in ptq.layers}
    for name, lq in ptq.layers.items():
        bn = qat.get_submodule(bn_of[name]) if name in bn_of else None
        layer = qat.get_submodule(name)
        seven = "reduce_range" in ptq.info and lq.weight_qtype == "int8"
        set_module(qat, name, QATLayer(layer, lq, bn, recipe.lsq, seven))
        if name in bn_of:
            set_module(qat, bn_of[name], nn.Identity())
    drop_fused_activations(qat, ptq.layers)
    info = {
        **({"reduce_range": ptq.info["reduce_range"]} if "reduce_range" in ptq.info else {}),
        "ptq_init": base.name,
        "bn_folded": bn_of,
        "fused_relu": {n: lq.fused_relu for n, lq in ptq.layers.items() if lq.fused_relu},
        "shared_activation": sorted(n for n, lq in ptq.layers.items() if lq.activation_shared),
    }
    return QATPrepared(qat, recipe, dict(ptq.skipped), info)


def convert_qat(prepared: QATPrepared) -> QuantizedModel:
    """The trained model as a QuantizedModel (BatchNorm folded with its running statistics)."""
    model = copy.deepcopy(prepared.model).eval()
    layers: dict[str, LayerQuant] = {}
    folded: dict[str, str] = dict(prepared.info.get("bn_folded", {}))  # type: ignore[arg-type]
    relus: dict[str, str] = dict(prepared.info.get("fused_relu", {}))  # type: ignore[arg-type]
    shared = set(prepared.info.get("shared_activation", []))  # type: ignore[call-overload]
    for name, m in list(((n, m) for n, m in model.named_modules() if isinstance(m, QATLayer))):
        with torch.no_grad():
            w, b = m.folded()
            s = m.weight_scale(w).detach().to(torch.float32)
            zp = torch.zeros(s.shape, dtype=torch.int32)
            w2 = w.reshape(w.shape[0], -1) if isinstance(m.granularity, PerGroup) else w
            q = quantize(w2.detach(), s, zp, m.qtype, m.granularity).reshape(w.shape).clamp(m.wmin, m.wmax)
            layer = m.layer
            if layer.bias is None:
                layer.bias = nn.Parameter(b.detach().clone())
            else:
                layer.bias.copy_(b)
        lq = LayerQuant(
            m.kind,
            m.mode,
            q,
            s,
            zp,
            m.qtype.name,
            m.granularity,
            input=m.input_fq.act_quant() if m.input_fq else None,
            output=m.output_fq.act_quant() if m.output_fq else None,
            fused_relu=relus.get(name),
            fused_act=m.act or "relu",
            activation_shared=name in shared,
        )
        layers[name] = lq
        set_module(model, name, layer)
        if (
            lq.fused_relu and not lq.activation_shared
        ):  # training applied it inside the layer; the float model computes it again
            set_module(model, lq.fused_relu, nn.ReLU6() if lq.fused_act == "relu6" else nn.ReLU())
    skipped = dict(prepared.skipped)
    if prepared.recipe.embeddings:  # tables trained in float; stored as int8 per row, as PTQ does
        tables: dict[str, LayerQuant] = {}
        why: dict[str, str] = {}
        quantize_embeddings(model, prepared.recipe, tables, why)
        layers.update(tables)
        skipped = {k: v for k, v in skipped.items() if k not in tables} | why
    write_back(model, layers)
    for p in model.parameters():
        p.requires_grad_(False)
    return QuantizedModel(
        model=model,
        recipe=prepared.recipe,
        layers=layers,
        skipped=skipped,
        folded=folded,
        info={k: v for k, v in prepared.info.items() if k not in ("bn_folded", "fused_relu", "shared_activation")},
    )
