"""The post-training recipes: the shared base, casts, weight-only, dynamic and static INT8, fixed point.

One frozen, validated dataclass per scheme; the names users type are in :mod:`.registry`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from quantwise.errors import UserError

MODULE_TYPES = ("Linear", "Conv2d")

WEIGHT_METHODS = ("rtn", "gptq", "awq", "awq-gptq")

CALIBRATIONS = (
    "minmax",
    "moving-average",
    "percentile",
    "entropy",
    "mse",
)  # calibrate.observers.OBSERVERS implements each


def _check_alpha(kind: str, alpha: float) -> None:
    if not 0 <= alpha < 1:
        raise UserError(f"recipe {kind}: smooth_alpha must be in [0, 1) (0: searched), got {alpha}")


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


TFLITE_CONVERTER_MODES = ("fp32", "dynamic-range", "full-int8", "float16", "16x8")


@dataclass(frozen=True)
class TFLiteConverterRecipe(Recipe):
    """TensorFlow's own ``TFLiteConverter`` on the TensorFlow model a graph came from, run in LiteRT.

    quantwise does not choose these scales: the converter does (the record says so). A peer route
    measured beside quantwise's own formats for TensorFlow models.

    Attributes:
        mode: ``dynamic-range`` (int8 weights, activations quantized at run time), ``full-int8``
            (a representative dataset from the calibration examples; int8 kernels only),
            ``float16`` (fp16 weights), ``16x8`` (int16 activations, int8 weights) or ``fp32``.
    """

    kind: ClassVar[str] = "tflite-converter"
    mode: str = "full-int8"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.include or self.exclude or self.module_types:
            raise UserError("recipe tflite-converter: the converter quantizes the whole model; drop include/exclude")
        if self.mode not in TFLITE_CONVERTER_MODES:
            raise UserError(
                f"recipe tflite-converter: mode must be one of {', '.join(TFLITE_CONVERTER_MODES)}, got {self.mode!r}"
            )

    @property
    def name(self) -> str:
        return f"tflite-converter-{self.mode}"


@dataclass(frozen=True)
class WeightOnlyRecipe(Recipe):
    """Integer weights, float activations (``weight-int8``, ``weight-int4``).

    Attributes:
        bits: 8 or 4.
        group_size: 0 for per-channel, else 32, 64 or 128 elements per scale along the input dim.
        symmetric: symmetric weight grid (zero point 0).
        method: ``rtn`` (round to nearest), ``gptq`` (Hessian-based error compensation), ``awq``
            (activation-aware per-input-channel scales folded into the norm or Linear before each
            group of Linears, then round to nearest) or ``awq-gptq`` (those scales, then GPTQ).
        gptq_damp: GPTQ diagonal dampening, as a fraction of the mean Hessian diagonal.
        embeddings: also store embedding tables as integers (see ``embedding_bits``).
        embedding_bits: 8 (one scale per row) or 4 (one scale per 32 values of a row; ONNX
            Runtime's GatherBlockQuantized).
        full_range: symmetric int4 over the full grid: each group's value of largest magnitude
            maps to -8 (scale = that value / -8, possibly negative), as ONNX Runtime's MatMulNBits
            quantizer and llama.cpp's Q4_0 do; off: scale = max|w| / 7.5 (QAT starts from this,
            since it learns a positive step size).
        head_bits: 0 (the same as ``bits``) or 8: the output head (a language model's LM head,
            and the embedding tied to it) at 8 bits, as llama.cpp's quantizer keeps it.
        kv_cache: ``float`` (default) or ``int8``: causal LMs keep their attention keys and values
            as int8, per token and head in blocks of 32 with an fp16 scale (llama.cpp's ``Q8_0``
            cache; in the torch simulation and llamacpp; ONNX Runtime's step graph keeps a float cache).
        fp16_scales: round every scale to half precision before rounding the weights, as GGUF's
            Q8_0/Q4_0 blocks store them (so the weights can be written to GGUF exactly).
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
    fp16_scales: bool = False
    full_range: bool = True
    head_bits: int = 0
    kv_cache: str = "float"
    label: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bits not in (4, 8):
            raise UserError(f"recipe weight-only: bits must be 4 or 8, got {self.bits}")
        if self.group_size not in (0, 16, 32, 64, 128, 256):
            raise UserError(
                f"recipe weight-only: group_size must be 0 (per-channel) or 16/32/64/128/256, got {self.group_size}"
            )
        if self.method not in WEIGHT_METHODS:
            raise UserError(
                f"recipe weight-only: method must be one of {', '.join(WEIGHT_METHODS)}, got {self.method!r}"
            )
        if not 0 <= self.gptq_damp < 1:
            raise UserError(f"recipe weight-only: gptq_damp must be in [0, 1), got {self.gptq_damp}")
        if self.embedding_bits not in (4, 8):
            raise UserError(f"recipe weight-only: embedding_bits must be 8 or 4, got {self.embedding_bits}")
        if self.head_bits not in (0, 4, 8):
            raise UserError(f"recipe weight-only: head_bits must be 0 (as bits), 4 or 8, got {self.head_bits}")
        if self.kv_cache not in ("float", "int8"):
            raise UserError(f"recipe weight-only: kv_cache must be float or int8, got {self.kv_cache!r}")
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
        smoothquant: fold SmoothQuant scales (activation outliers moved into the weights) into the
            norm or Linear before each group of Linears first; needs calibration data.
        smooth_alpha: SmoothQuant's migration strength in (0, 1); 0 searches it on the
            calibration data (the choice and its errors are recorded).
    """

    kind: ClassVar[str] = "dynamic-int8"
    per_channel: bool = True
    activations: str = "per-tensor"
    module_types: tuple[str, ...] = ("Linear",)
    embeddings: bool = True
    smoothquant: bool = False
    smooth_alpha: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_alpha(self.kind, self.smooth_alpha)
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
        smoothquant: fold SmoothQuant scales into the norm or Linear before each group of
            Linears before calibrating (see ``dynamic-int8``).
        smooth_alpha: migration strength in (0, 1); 0 searches it on the calibration data.
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
    smoothquant: bool = False
    smooth_alpha: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_alpha(self.kind, self.smooth_alpha)
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
