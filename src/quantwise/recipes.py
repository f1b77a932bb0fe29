"""Recipes as data: one frozen, validated dataclass per scheme, and the registry of names.

A recipe says *what* to build; :func:`quantwise.quantize` decides *how*, through a
handler registered for the recipe's type. Recipes round-trip through JSON and YAML and
reject unknown keys by name.

Example:
    >>> r = recipe_from_dict({"recipe": "static-int8", "calibration": "entropy"})
    >>> recipe_from_dict(json.loads(recipe_to_json(r))) == r
    True
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, ClassVar

import yaml

from quantwise.errors import UserError

MODULE_TYPES = ("Linear", "Conv2d")

CALIBRATIONS = (
    "minmax",
    "moving-average",
    "percentile",
    "entropy",
    "mse",
)  # calibrate.observers.OBSERVERS implements each


@dataclass(frozen=True)
class Recipe:
    """Fields every scheme shares: which layers it touches.

    Attributes:
        include: fnmatch patterns of module names to quantize (empty: all eligible layers).
        exclude: fnmatch patterns of module names to keep in float.
        module_types: limit to these module types (``Linear``, ``Conv2d``); empty: both.
    """

    kind: ClassVar[str] = "base"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    module_types: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for f in ("include", "exclude", "module_types"):
            v = getattr(self, f)
            if isinstance(v, str):
                object.__setattr__(self, f, (v,))
            elif not isinstance(v, tuple):
                object.__setattr__(self, f, tuple(v))
        bad = [t for t in self.module_types if t not in MODULE_TYPES]
        if bad:
            raise UserError(
                f"recipe {self.kind}: unknown module type {bad[0]!r}; choose from {', '.join(MODULE_TYPES)}"
            )

    @property
    def name(self) -> str:
        """The name users type for this recipe (registry key)."""
        return self.kind

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"recipe": self.name}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            d[f.name] = list(v) if isinstance(v, tuple) else v
        return d


@dataclass(frozen=True)
class CastRecipe(Recipe):
    """Cast the whole model to a 16-bit float type (``fp16`` or ``bf16``)."""

    kind: ClassVar[str] = "fp16"
    dtype: str = "fp16"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.include or self.exclude or self.module_types:
            raise UserError(
                f"recipe {self.dtype}: the whole model is cast, so include/exclude/module_types would be ignored; "
                "drop them, or use mixed (FP16 weights for the layers it keeps in float)"
            )
        if self.dtype not in ("fp16", "bf16"):
            raise UserError(f"recipe cast: dtype must be fp16 or bf16, got {self.dtype!r}")

    @property
    def name(self) -> str:
        return self.dtype


@dataclass(frozen=True)
class WeightOnlyRecipe(Recipe):
    """Integer weights, float activations (``weight-int8``, ``weight-int4``).

    Attributes:
        bits: 8 or 4.
        group_size: 0 for per-channel, else 32, 64 or 128 elements per scale along the input dim.
        symmetric: symmetric weight grid (zero point 0).
        method: ``rtn`` (round to nearest) or ``gptq`` (Hessian-based error compensation).
        gptq_damp: GPTQ diagonal dampening, as a fraction of the mean Hessian diagonal.
        embeddings: also store embedding tables as integers (see ``embedding_bits``).
        embedding_bits: 8 (one scale per row) or 4 (one scale per 32 values of a row; ONNX
            Runtime's GatherBlockQuantized).
        label: the use-case name it was asked for (``w8a16``, ``w4a16``: integer weights with float
            activations, which on a CPU means FP32 activations), shown in results.
    """

    kind: ClassVar[str] = "weight-int8"
    bits: int = 8
    group_size: int = 0
    symmetric: bool = True
    method: str = "rtn"
    gptq_damp: float = 0.01
    embeddings: bool = True
    embedding_bits: int = 8
    label: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bits not in (4, 8):
            raise UserError(f"recipe weight-only: bits must be 4 or 8, got {self.bits}")
        if self.group_size not in (0, 16, 32, 64, 128, 256):
            raise UserError(
                f"recipe weight-only: group_size must be 0 (per-channel) or 16/32/64/128/256, got {self.group_size}"
            )
        if self.method not in ("rtn", "gptq"):
            raise UserError(f"recipe weight-only: method must be rtn or gptq, got {self.method!r}")
        if not 0 <= self.gptq_damp < 1:
            raise UserError(f"recipe weight-only: gptq_damp must be in [0, 1), got {self.gptq_damp}")
        if self.embedding_bits not in (4, 8):
            raise UserError(f"recipe weight-only: embedding_bits must be 8 or 4, got {self.embedding_bits}")
        if self.label not in ("", "w8a16", "w4a16"):
            raise UserError(f"recipe weight-only: label must be empty, w8a16 or w4a16, got {self.label!r}")

    @property
    def name(self) -> str:
        return self.label or f"weight-int{self.bits}"


@dataclass(frozen=True)
class DynamicInt8Recipe(Recipe):
    """INT8 per-channel weights; activations quantized per tensor at run time (uint8, affine).

    Attributes:
        per_channel: per-channel weights (else per tensor).
        activations: ``per-tensor`` (one uint8 affine scale for the whole input) or ``per-token``
            (one symmetric int8 scale per row of the flattened ``(tokens, features)`` input, which
            isolates transformers' outlier tokens).
        embeddings: also store embedding tables as int8, one scale per row.
    """

    kind: ClassVar[str] = "dynamic-int8"
    per_channel: bool = True
    activations: str = "per-tensor"
    module_types: tuple[str, ...] = ("Linear",)
    embeddings: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.activations not in ("per-tensor", "per-token"):
            raise UserError(
                f"recipe dynamic-int8: activations must be per-tensor or per-token, got {self.activations!r}"
            )


@dataclass(frozen=True)
class StaticInt8Recipe(Recipe):
    """W8A8: activation ranges calibrated ahead of time.

    Attributes:
        calibration: observer for activations: minmax, moving-average, percentile, entropy, mse.
        percentile: the percentile for ``calibration="percentile"``.
        per_channel: per-channel weights (else per tensor).
        symmetric_activations: int8 symmetric activations (else uint8 affine).
        fold_bn: fold BatchNorm into the preceding convolution before calibration.
        fuse_relu: fuse a ReLU that follows a Conv/Linear into its output quantization.
        embeddings: also store embedding tables as int8, one scale per row.
        weight_bits: 8, or 4 for W4A8 (int4 weight values, run by the int8 kernels).
        quantize_outputs: calibrate and quantize every layer's output, not only where a
            runtime's integer kernel needs it, so nothing runs in float between layers
            (full-integer TFLite).
        activation_bits: 8, the only width the runtimes' integer kernels take (any other
            value is refused, naming what is supported).
    """

    kind: ClassVar[str] = "static-int8"
    calibration: str = "minmax"
    percentile: float = 99.99
    per_channel: bool = True
    symmetric_activations: bool = False
    fold_bn: bool = True
    fuse_relu: bool = True
    embeddings: bool = True
    weight_bits: int = 8
    quantize_outputs: bool = False
    activation_bits: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.activation_bits != 8:
            raise UserError(
                f"recipe static-int8: activation_bits {self.activation_bits} has no integer kernel in ONNX Runtime "
                "(QLinearConv/QGemm), PyTorch or TFLite, which take 8-bit activations: use activation_bits 8 "
                "(weight_bits 4 for W4A8), or recipe fixed-point with bits 16 for 16-bit activations"
            )
        if self.calibration not in CALIBRATIONS:
            raise UserError(
                f"recipe static-int8: unknown calibration {self.calibration!r}; choose from {', '.join(CALIBRATIONS)}"
            )
        if not 50 < self.percentile <= 100:
            raise UserError(f"recipe static-int8: percentile must be in (50, 100], got {self.percentile}")
        if self.weight_bits not in (4, 8):
            raise UserError(f"recipe static-int8: weight_bits must be 8 or 4, got {self.weight_bits}")

    @property
    def name(self) -> str:
        return "static-w4a8" if self.weight_bits == 4 else "static-int8"


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


@dataclass(frozen=True)
class FixedPointRecipe(Recipe):
    """Integer-only fixed point for hardware without an FPU: every tensor an integer with zero
    point 0, int32 (or int16) accumulators, rescaling by an integer multiplier and right shift.

    Attributes:
        bits: activation width, 8 or 16 (tensors after a ReLU use the unsigned type).
        weight_bits: weight width, 8 or 16 (per output channel, symmetric).
        pot_scales: power-of-two scales, so every tensor is a Qm.n format and rescaling a shift.
        accumulator: accumulator width, 32 or 16.
        on_overflow: when the worst case does not fit the accumulator: ``refuse`` (an error naming
            the layers) or ``saturate`` (accumulate with saturation and count every event).
        calibration: observer for activation ranges.
    """

    kind: ClassVar[str] = "fixed-point"
    bits: int = 8
    weight_bits: int = 8
    pot_scales: bool = False
    accumulator: int = 32
    on_overflow: str = "refuse"
    calibration: str = "minmax"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.include or self.exclude or self.module_types:
            raise UserError(
                "recipe fixed-point: include/exclude/module_types cannot apply: integer-only means every layer is "
                "integer (no float to fall back to); drop them, or use static-int8 to keep layers in float"
            )
        if self.bits not in (8, 16) or self.weight_bits not in (8, 16):
            raise UserError(
                f"recipe fixed-point: bits and weight_bits must be 8 or 16, got {self.bits} and {self.weight_bits}"
            )
        if self.accumulator not in (16, 32):
            raise UserError(f"recipe fixed-point: accumulator must be 32 or 16, got {self.accumulator}")
        if self.accumulator == 16 and (self.bits, self.weight_bits) != (8, 8):
            raise UserError(
                "recipe fixed-point: a 16-bit accumulator cannot hold one product of 16-bit values: use accumulator 32"
            )
        if self.on_overflow not in ("refuse", "saturate"):
            raise UserError(f"recipe fixed-point: on_overflow must be refuse or saturate, got {self.on_overflow!r}")
        if self.calibration not in CALIBRATIONS:
            raise UserError(
                f"recipe fixed-point: unknown calibration {self.calibration!r}; choose from {', '.join(CALIBRATIONS)}"
            )


# name users type -> (class, default overrides)
RECIPES: dict[str, tuple[type[Recipe], dict[str, Any]]] = {
    "fp16": (CastRecipe, {"dtype": "fp16"}),
    "bf16": (CastRecipe, {"dtype": "bf16"}),
    "weight-int8": (WeightOnlyRecipe, {"bits": 8}),
    "weight-int4": (WeightOnlyRecipe, {"bits": 4, "group_size": 32}),
    "w8a16": (WeightOnlyRecipe, {"bits": 8, "label": "w8a16"}),
    "w4a16": (WeightOnlyRecipe, {"bits": 4, "group_size": 32, "label": "w4a16"}),
    "dynamic-int8": (DynamicInt8Recipe, {}),
    "static-int8": (StaticInt8Recipe, {}),
    "mixed": (MixedRecipe, {}),
    "fixed-point": (FixedPointRecipe, {}),
    "static-w4a8": (StaticInt8Recipe, {"weight_bits": 4}),
    "qat-w8a8": (QATRecipe, {}),
    "qat-w4a8": (QATRecipe, {"weight_bits": 4}),
    "qat-w4": (QATRecipe, {"weight_bits": 4, "activations": False, "group_size": 32}),
    "qat-w8": (QATRecipe, {"activations": False}),
}


def get_recipe(name: str, **overrides: Any) -> Recipe:
    """Build a registered recipe by name, with field overrides.

    Raises:
        UserError: unknown name or key, or an invalid value.
    """
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}: choose one of {', '.join(RECIPES)}")
    cls, defaults = RECIPES[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in overrides:
        if key not in fields:
            raise UserError(f"recipe {name}: unknown key {key!r}; known keys: {', '.join(fields)}")
    kwargs = {**defaults, **overrides}
    try:
        return cls(**_coerce(cls, kwargs))
    except (TypeError, ValueError) as e:
        raise UserError(f"recipe {name}: {e}") from None


def _coerce(cls: type[Recipe], kwargs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.name not in kwargs:
            continue
        v = kwargs[f.name]
        default = f.default if f.default is not dataclasses.MISSING else None
        if isinstance(default, tuple) and isinstance(v, (list, str)):
            v = tuple([v] if isinstance(v, str) else v)
        elif isinstance(default, bool):
            if not isinstance(v, bool):
                raise UserError(f"recipe {cls.kind}: key {f.name!r} must be true or false, got {v!r}")
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise UserError(f"recipe {cls.kind}: key {f.name!r} must be a number, got {v!r}")
            if isinstance(default, int) and not float(v).is_integer():
                raise UserError(f"recipe {cls.kind}: key {f.name!r} must be an integer, got {v!r}")
            v = type(default)(v)
        elif isinstance(default, str) and not isinstance(v, str):
            raise UserError(f"recipe {cls.kind}: key {f.name!r} must be a string, got {v!r}")
        out[f.name] = v
    return out


def recipe_from_dict(d: dict[str, Any]) -> Recipe:
    """Inverse of :meth:`Recipe.to_dict`; the ``recipe`` key names the scheme."""
    if not isinstance(d, dict) or "recipe" not in d:
        raise UserError('a recipe file needs a \'recipe\' key naming the scheme, e.g. {"recipe": "static-int8"}')
    d = dict(d)
    return get_recipe(d.pop("recipe"), **d)


def recipe_to_json(r: Recipe) -> str:
    return json.dumps(r.to_dict(), indent=2)


def recipe_to_yaml(r: Recipe) -> str:
    return yaml.safe_dump(r.to_dict(), sort_keys=False)


def recipe_from_text(text: str) -> Recipe:
    """Parse a recipe from JSON or YAML text."""
    try:
        data = yaml.safe_load(text)  # YAML is a superset of JSON
    except yaml.YAMLError as e:
        raise UserError(f"recipe file is not valid JSON or YAML: {str(e).splitlines()[0]}") from None
    return recipe_from_dict(data)
