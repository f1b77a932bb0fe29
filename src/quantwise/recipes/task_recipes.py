"""Recipes that need a task's data beyond calibration: quantization-aware training and the
mixed-precision search (built by :func:`quantwise.api.build_quantized`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from quantwise.errors import UserError
from quantwise.recipes.schemes import CALIBRATIONS, Recipe


@dataclass(frozen=True)
class QATRecipe(Recipe):
    """Quantization-aware training: fake quantization in the forward pass, straight-through
    gradients, then conversion to the same QuantizedModel post-training quantization makes.

    Attributes:
        weight_bits: 8 or 4 (symmetric, per channel unless ``per_channel`` is false).
        activations: quantize activations to 8 bits (W8A8, W4A8); false: weight-only (W4).
        per_channel: per-channel weights (else per tensor).
        group_size: weight-only: elements per scale along the input (0: per channel).
        lsq: learn the step sizes (LSQ) instead of fixed calibrated activation ranges and
            min-max weight ranges.
        distill: add knowledge distillation from the FP32 model (alone when labels are missing).
        distill_on: what distillation matches: ``logits`` (through the task's head, KL at
            temperature 2) or ``outputs`` (the model's own outputs, such as sentence embeddings:
            mean squared error relative to the FP32 outputs' mean square; needs no head and no labels).
        epochs: passes over the training data (0: the task's default).
        steps: optimizer steps; overrides ``epochs`` when positive.
        lr: learning rate (0: the task's default); cosine decay after a 5% linear warm-up.
        calibration: observer that initialises activation ranges (training starts where PTQ ends).
        freeze_bn_steps: BatchNorm running statistics stop updating after this many steps.
        patience: early stop after this many validations without improvement (0: never).
        embeddings: store embedding tables as int8, one scale per row, from the trained weights
            (they train in float; as in post-training quantization).
        quantize_outputs: fake-quantize every layer's output too (as ``static-int8``'s key), so
            the converted model is full integer in TFLite.
    """

    kind: ClassVar[str] = "qat-w8a8"
    weight_bits: int = 8
    activations: bool = True
    per_channel: bool = True
    group_size: int = 0
    lsq: bool = False
    distill: bool = False
    distill_on: str = "logits"
    epochs: int = 0
    steps: int = 0
    lr: float = 0.0
    calibration: str = "minmax"
    freeze_bn_steps: int = 200
    patience: int = 0
    embeddings: bool = True
    quantize_outputs: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weight_bits not in (4, 8):
            raise UserError(f"recipe {self.name}: weight_bits must be 8 or 4, got {self.weight_bits}")
        if self.group_size not in (0, 16, 32, 64, 128) or (self.group_size and self.activations):
            raise UserError(
                f"recipe {self.name}: group_size must be 0, or 16/32/64/128 for weight-only QAT, got {self.group_size}"
            )
        for key in ("epochs", "steps", "freeze_bn_steps", "patience"):
            if getattr(self, key) < 0:
                raise UserError(f"recipe {self.name}: {key} must not be negative, got {getattr(self, key)}")
        if self.lr < 0 or self.lr != self.lr:
            raise UserError(
                f"recipe {self.name}: lr must be a positive number (0 for the task's default), got {self.lr}"
            )
        if self.calibration not in CALIBRATIONS:
            raise UserError(
                f"recipe {self.name}: unknown calibration {self.calibration!r}; choose from {', '.join(CALIBRATIONS)}"
            )
        if self.distill_on not in ("logits", "outputs"):
            raise UserError(f"recipe {self.name}: distill_on must be logits or outputs, got {self.distill_on!r}")
        if self.quantize_outputs and not self.activations:
            raise UserError(f"recipe {self.name}: quantize_outputs needs quantized activations (qat-w8a8 or qat-w4a8)")

    @property
    def name(self) -> str:
        if not self.activations:
            return f"qat-w{self.weight_bits}"
        return f"qat-w{self.weight_bits}a8"


@dataclass(frozen=True)
class MixedRecipe(Recipe):
    """Mixed precision within an accuracy budget, per layer.

    ``optimize="latency"``: a base INT8 scheme with the most sensitive layers kept in FP32.
    ``optimize="size"``: every Linear and embedding table at INT4 (weights; GPTQ for Linear, blocks
    of 32) with the most sensitive ones promoted to INT8.

    Attributes:
        base: ``static-int8`` or ``dynamic-int8`` (latency).
        calibration: observer for a static base.
        max_drop: budget in points of validation predictions that may change vs FP32.
        optimize: ``latency`` or ``size``.
    """

    kind: ClassVar[str] = "mixed"
    base: str = "static-int8"
    calibration: str = "minmax"
    max_drop: float = 0.2
    optimize: str = "latency"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.base not in ("static-int8", "dynamic-int8"):
            raise UserError(f"recipe mixed: base must be static-int8 or dynamic-int8, got {self.base!r}")
        if self.calibration not in CALIBRATIONS:
            raise UserError(
                f"recipe mixed: unknown calibration {self.calibration!r}; choose from {', '.join(CALIBRATIONS)}"
            )
        if self.max_drop < 0:
            raise UserError(f"recipe mixed: max_drop must not be negative, got {self.max_drop}")
        if self.optimize not in ("latency", "size"):
            raise UserError(f"recipe mixed: optimize must be latency or size, got {self.optimize!r}")
