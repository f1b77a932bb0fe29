"""Recipes that need a task's data beyond calibration: quantization-aware training and the
mixed-precision search (built by :func:`quantwise.api.build_quantized`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from quantwise.errors import UserError
from quantwise.recipes.fields import declared, knob
from quantwise.recipes.schemes import CALIBRATIONS, EMBEDDINGS_HELP, PER_CHANNEL_HELP, Recipe

_COUNT = {"low": 0}


@declared
@dataclass(frozen=True)
class QATRecipe(Recipe):
    """Quantization-aware training: fake quantization in the forward pass, straight-through
    gradients, then conversion to the same QuantizedModel post-training quantization makes."""

    kind: ClassVar[str] = "qat-w8a8"
    family: ClassVar[str] = "qat"
    weight_bits: int = knob(8, "weight width, symmetric (8, or 4 for W4A8 and W4)", choices=(8, 4))
    activations: bool = knob(
        True, "quantize activations to 8 bits (W8A8, W4A8); off: weight-only (the recipe's name chooses it)", flag=""
    )
    per_channel: bool = knob(True, PER_CHANNEL_HELP, flag="--per-tensor", negate=True)
    group_size: int = knob(
        0, "weight-only QAT: elements per scale along the input (0: per channel)", choices=(0, 16, 32, 64, 128)
    )
    lsq: bool = knob(False, "learn the step sizes (LSQ) instead of fixed calibrated ranges")
    distill: bool = knob(False, "add knowledge distillation from the FP32 model (alone when labels are missing)")
    distill_on: str = knob(
        "logits",
        "what distillation matches: logits (through the task's head, KL at temperature 2) or outputs (the model's "
        "own outputs, such as sentence embeddings: relative mean squared error; needs no head and no labels)",
        choices=("logits", "outputs"),
        implies=(("distill", True),),
    )
    epochs: int = knob(0, "passes over the training data (0: the task's default)", cli_positive=True, **_COUNT)
    steps: int = knob(0, "optimizer steps; overrides epochs when positive", cli_positive=True, **_COUNT)
    lr: float = knob(
        0.0,
        "learning rate (0: the task's default); cosine decay after a 5% linear warm-up",
        cli_positive=True,
        **_COUNT,
    )
    calibration: str = knob(
        "minmax", "observer for activation ranges (training starts where PTQ ends)", choices=CALIBRATIONS
    )
    freeze_bn_steps: int = knob(200, "BatchNorm running statistics stop updating after this many steps", **_COUNT)
    patience: int = knob(
        0, "early stop after this many validations without improvement (0: never)", cli_positive=True, **_COUNT
    )
    embeddings: bool = knob(True, EMBEDDINGS_HELP, flag="--float-embeddings", negate=True)
    quantize_outputs: bool = knob(
        False, "fake-quantize every layer's output too, so the converted model is full integer in TFLite"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group_size and self.activations:
            raise UserError(
                f"recipe {self.name}: group_size applies to weight-only QAT (qat-w4, qat-w8); use 0 with activations"
            )
        if self.quantize_outputs and not self.activations:
            raise UserError(f"recipe {self.name}: quantize_outputs needs quantized activations (qat-w8a8 or qat-w4a8)")

    @property
    def name(self) -> str:
        if not self.activations:
            return f"qat-w{self.weight_bits}"
        return f"qat-w{self.weight_bits}a8"


@declared
@dataclass(frozen=True)
class MixedRecipe(Recipe):
    """Mixed precision within an accuracy budget, per layer.

    ``optimize="latency"``: a base INT8 scheme with the most sensitive layers kept in FP32.
    ``optimize="size"``: every Linear and embedding table at INT4 (weights; GPTQ for Linear, blocks
    of 32) with the most sensitive ones promoted to INT8."""

    kind: ClassVar[str] = "mixed"
    family: ClassVar[str] = "mixed"
    base: str = knob(
        "static-int8", "the INT8 scheme for the layers it quantizes (latency)", choices=("static-int8", "dynamic-int8")
    )
    calibration: str = knob("minmax", "observer for activation ranges (a static base)", choices=CALIBRATIONS)
    max_drop: float = knob(
        0.2,
        "budget in points of validation predictions that may change vs FP32 (a causal LM: percent its "
        "validation perplexity may rise)",
        low=0,
    )
    optimize: str = knob(
        "latency",
        "latency (INT8 base, sensitive layers FP32) or size (INT4, sensitive layers INT8)",
        choices=("latency", "size"),
    )
    int8_compute: bool = knob(
        False,
        "optimize size on a causal LM: both widths compute in int8, activations quantized per row and weight "
        "block at run time (W4A8, the promoted layers W8A8: MatMulNBits at accuracy_level=4)",
    )
