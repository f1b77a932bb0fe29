"""The post-training recipes: the shared base, casts, weight-only, dynamic and static INT8, fixed point.

One frozen, validated dataclass per scheme; every key is declared with :func:`.fields.knob` (help,
choices, range, flag), from which the checks, ``quantwise recipes``, ``docs/recipes.md`` and the
command-line flags are generated. The names users type are in :mod:`.registry`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from quantwise.errors import UserError
from quantwise.recipes.fields import check_field, declared, knob

MODULE_TYPES = ("Linear", "Conv2d")

WEIGHT_METHODS = ("rtn", "gptq", "awq", "awq-gptq")

CALIBRATIONS = (
    "minmax",
    "moving-average",
    "percentile",
    "entropy",
    "mse",
)  # calibrate.observers.OBSERVERS implements each

CALIBRATION_HELP = "observer for activation ranges"
EMBEDDINGS_HELP = "store embedding tables as int8, one scale per row (off: keep them in float)"
PER_CHANNEL_HELP = "per-channel weights (off: one scale per tensor)"
SMOOTHQUANT_HELP = (
    "fold SmoothQuant scales (activation outliers moved into the weights) into the norm or Linear before each "
    "group of Linears first; needs calibration data"
)
SMOOTH_ALPHA_HELP = (
    "SmoothQuant's migration strength; 0 searches it per group of Linears on the calibration data (the choices and "
    "their errors are recorded)"
)


REDUCE_RANGE_HELP = (
    "int8 weights within 7 bits ([-63, 63]) so ONNX Runtime's and PyTorch's u8 x s8 kernels cannot saturate their "
    "16-bit intermediate sums, which they do on x86 CPUs without VNNI (AVX2 only); auto: on where this CPU lacks VNNI"
)


def _reduce_range() -> Any:
    return knob("auto", REDUCE_RANGE_HELP, choices=("auto", "on", "off"))


def _calibration() -> Any:
    return knob("minmax", CALIBRATION_HELP, choices=CALIBRATIONS)


def _embeddings() -> Any:
    return knob(True, EMBEDDINGS_HELP, flag="--float-embeddings", negate=True)


def _per_channel() -> Any:
    return knob(True, PER_CHANNEL_HELP, flag="--per-tensor", negate=True)


ROTATE_HELP = (
    "rotate a Llama-style decoder first (QuaRot): a random orthogonal turn of the residual stream and a Hadamard "
    "per attention head folded into the weights, a block Hadamard computed before each MLP down-projection; it "
    "spreads activation outliers over the channels and leaves the float model's outputs unchanged (checked); "
    "not for GGUF"
)


def _smoothquant() -> Any:
    return knob(False, SMOOTHQUANT_HELP)


def _smooth_alpha() -> Any:
    return knob(0.0, SMOOTH_ALPHA_HELP, low=0, high=1, high_open=True, implies=(("smoothquant", True),))


@declared
@dataclass(frozen=True)
class Recipe:
    """Fields every scheme shares: which layers it touches."""

    kind: ClassVar[str] = "base"
    family: ClassVar[str] = "every recipe"  # how help texts name the recipes a key belongs to
    include: tuple[str, ...] = knob(
        (), "fnmatch patterns of module names to quantize (empty: all eligible layers); repeatable"
    )
    exclude: tuple[str, ...] = knob((), "fnmatch patterns of module names to keep in float; repeatable")
    module_types: tuple[str, ...] = knob(
        (), "limit to these module types (empty: every type the recipe handles); repeatable", choices=MODULE_TYPES
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(f.default, tuple) and not isinstance(v, tuple):
                object.__setattr__(self, f.name, (v,) if isinstance(v, str) else tuple(v))
        for f in dataclasses.fields(self):
            check_field(self.name, f, getattr(self, f.name))

    def _refuse_layer_selection(self, why: str) -> None:
        if self.include or self.exclude or self.module_types:
            raise UserError(f"recipe {self.name}: include/exclude/module_types {why}")

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


@declared
@dataclass(frozen=True)
class CastRecipe(Recipe):
    """Cast the whole model to a 16-bit float type (``fp16`` or ``bf16``)."""

    kind: ClassVar[str] = "fp16"
    family: ClassVar[str] = "fp16/bf16"
    dtype: str = knob("fp16", "the 16-bit float type (the recipe's name chooses it)", choices=("fp16", "bf16"), flag="")

    def __post_init__(self) -> None:
        super().__post_init__()
        self._refuse_layer_selection(
            "would be ignored: the whole model is cast; drop them, or use mixed (FP16 weights for the layers it "
            "keeps in float)"
        )

    @property
    def name(self) -> str:
        return self.dtype


TFLITE_CONVERTER_MODES = ("fp32", "dynamic-range", "full-int8", "float16", "16x8")


@declared
@dataclass(frozen=True)
class TFLiteConverterRecipe(Recipe):
    """TensorFlow's own ``TFLiteConverter`` on the TensorFlow model a graph came from, run in LiteRT.

    quantwise does not choose these scales: the converter does (the record says so). A peer route
    measured beside quantwise's own formats for TensorFlow models.
    """

    kind: ClassVar[str] = "tflite-converter"
    family: ClassVar[str] = "tflite-converter"
    mode: str = knob(
        "full-int8",
        "dynamic-range (int8 weights, activations quantized at run time), full-int8 (a representative dataset from "
        "the calibration examples; int8 kernels only), float16 (fp16 weights), 16x8 (int16 activations, int8 "
        "weights) or fp32 (the recipe's name chooses it)",
        choices=TFLITE_CONVERTER_MODES,
        flag="",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self._refuse_layer_selection("cannot apply: the converter quantizes the whole model; drop them")

    @property
    def name(self) -> str:
        return f"tflite-converter-{self.mode}"


@declared
@dataclass(frozen=True)
class WeightOnlyRecipe(Recipe):
    """Integer weights, float activations (``weight-int8``, ``weight-int4``)."""

    kind: ClassVar[str] = "weight-int8"
    family: ClassVar[str] = "weight-only"
    bits: int = knob(8, "weight width", choices=(4, 8))
    group_size: int = knob(
        0,
        "elements per scale along the input dimension (0: one scale per output channel)",
        choices=(0, 16, 32, 64, 128, 256),
    )
    symmetric: bool = knob(True, "symmetric weight grid (zero point 0; off: affine)", flag="--asymmetric", negate=True)
    method: str = knob(
        "rtn",
        "rtn (round to nearest), gptq (Hessian-based error compensation), awq (activation-aware per-input-channel "
        "scales folded into the norm or Linear before each group of Linears, then round to nearest) or awq-gptq "
        "(those scales, then GPTQ)",
        choices=WEIGHT_METHODS,
    )
    gptq_damp: float = knob(
        0.01, "GPTQ diagonal dampening, as a fraction of the mean Hessian diagonal", low=0, high=1, high_open=True
    )
    gptq_act_order: bool = knob(
        False,
        "GPTQ: quantize the columns in order of decreasing Hessian diagonal (activation order), each group's scale "
        "fixed beforehand from the unquantized weights (static groups, so groups stay consecutive columns)",
    )
    embeddings: bool = _embeddings()
    embedding_bits: int = knob(
        8,
        "embedding tables at 8 bits (one scale per row) or 4 (one scale per 32 values of a row; ONNX Runtime's "
        "GatherBlockQuantized)",
        choices=(8, 4),
    )
    fp16_scales: bool = knob(
        False,
        "round every scale to half precision before rounding the weights, as GGUF's Q8_0/Q4_0 blocks store them "
        "(with group size 32 the weights can be written to GGUF exactly)",
    )
    full_range: bool = knob(
        True,
        "symmetric int4 over the full grid: each group's value of largest magnitude maps to -8 (scale = that value "
        "/ -8, possibly negative), as ONNX Runtime's MatMulNBits quantizer and llama.cpp's Q4_0 do; off: scale = "
        "max|w| / 7.5",
        flag="--no-full-range",
        negate=True,
    )
    head_bits: int = knob(
        0,
        "0 (the same as bits) or 8: the output head (a language model's LM head, and the embedding tied to it) at "
        "8 bits, as llama.cpp's quantizer keeps it",
        choices=(0, 4, 8),
    )
    kv_cache: str = knob(
        "float",
        "int8: a causal LM keeps its attention keys and values as int8, per token and head in blocks of 32 with an "
        "fp16 scale (llama.cpp's Q8_0 cache; in the torch simulation and llamacpp; ONNX Runtime refuses it)",
        choices=("float", "int8"),
    )
    int8_compute: bool = knob(
        False,
        "activations quantized to int8 at run time per row and weight block (scale max|x|/127), so the dot products "
        "run in int8 (W4A8/W8A8): ONNX Runtime's MatMulNBits at accuracy_level=4; blocks need a group size",
    )
    rotate: bool = knob(False, ROTATE_HELP)
    label: str = knob(
        "",
        "the use-case name it was asked for (w8a16, w4a16: integer weights with float activations), shown in results",
        choices=("", "w8a16", "w4a16"),
        flag="",
    )

    @property
    def name(self) -> str:
        if self.int8_compute:
            return f"w{self.bits}a8-block"
        return self.label or f"weight-int{self.bits}"


@declared
@dataclass(frozen=True)
class DynamicInt8Recipe(Recipe):
    """INT8 per-channel weights; activations quantized per tensor at run time (uint8, affine)."""

    kind: ClassVar[str] = "dynamic-int8"
    family: ClassVar[str] = "dynamic-int8"
    per_channel: bool = _per_channel()
    activations: str = knob(
        "per-tensor",
        "per-tensor (one uint8 affine scale for the whole input) or per-token (one symmetric int8 scale per row of "
        "the flattened (tokens, features) input, which isolates transformers' outlier tokens)",
        choices=("per-tensor", "per-token"),
    )
    module_types: tuple[str, ...] = knob(
        ("Linear",), "limit to these module types (default Linear); repeatable", choices=MODULE_TYPES
    )
    embeddings: bool = _embeddings()
    smoothquant: bool = _smoothquant()
    smooth_alpha: float = _smooth_alpha()
    rotate: bool = knob(False, ROTATE_HELP)
    reduce_range: str = _reduce_range()


@declared
@dataclass(frozen=True)
class StaticInt8Recipe(Recipe):
    """W8A8: activation ranges calibrated ahead of time."""

    kind: ClassVar[str] = "static-int8"
    family: ClassVar[str] = "static-int8"
    calibration: str = _calibration()
    percentile: float = knob(99.99, "the percentile for calibration percentile", low=50, high=100, low_open=True)
    per_channel: bool = _per_channel()
    symmetric_activations: bool = knob(False, "int8 symmetric activations (off: uint8 affine)")
    fold_bn: bool = knob(
        True, "fold BatchNorm into the preceding convolution before calibration", flag="--no-fold-bn", negate=True
    )
    fuse_relu: bool = knob(
        True,
        "fuse a ReLU or ReLU6 that follows a Conv/Linear into its output quantization",
        flag="--no-fuse-relu",
        negate=True,
    )
    quantize_adds: bool = knob(
        True,
        "quantize residual adds of two quantized tensors and max-pools of one (found by dataflow), so a "
        "runtime runs them in int8 (ONNX Runtime's QLinearAdd) and nothing is requantized between layers",
        flag="--no-quantize-adds",
        negate=True,
    )
    embeddings: bool = _embeddings()
    weight_bits: int = knob(8, "weight width: 8, or 4 for W4A8 (int4 values run by the int8 kernels)", choices=(8, 4))
    quantize_outputs: bool = knob(
        False,
        "calibrate and quantize every layer's output, not only where a runtime's integer kernel needs it, so "
        "nothing runs in float between layers (full-integer TFLite)",
    )
    activation_bits: int = knob(
        8,
        "activation width: 8, the only width the runtimes' integer kernels take",
        choices=(8,),
        hint="ONNX Runtime (QLinearConv/QGemm), PyTorch and TFLite take 8-bit activations; use weight_bits 4 for "
        "W4A8, or recipe fixed-point with bits 16 for 16-bit activations",
    )
    smoothquant: bool = _smoothquant()
    smooth_alpha: float = _smooth_alpha()
    reduce_range: str = _reduce_range()

    @property
    def name(self) -> str:
        return "static-w4a8" if self.weight_bits == 4 else "static-int8"


@declared
@dataclass(frozen=True)
class FixedPointRecipe(Recipe):
    """Integer-only fixed point for hardware without an FPU: every tensor an integer with zero
    point 0, int32 (or int16) accumulators, rescaling by an integer multiplier and right shift."""

    kind: ClassVar[str] = "fixed-point"
    family: ClassVar[str] = "fixed-point"
    bits: int = knob(8, "activation width (tensors after a ReLU use the unsigned type)", choices=(8, 16))
    weight_bits: int = knob(8, "weight width (per output channel, symmetric)", choices=(8, 16))
    pot_scales: bool = knob(False, "power-of-two scales, so every tensor is a Qm.n format and rescaling a shift")
    accumulator: int = knob(32, "accumulator width", choices=(32, 16))
    on_overflow: str = knob(
        "refuse",
        "when the worst case does not fit the accumulator: refuse (an error naming the layers) or saturate "
        "(accumulate with saturation and count every event)",
        choices=("refuse", "saturate"),
    )
    calibration: str = _calibration()

    def __post_init__(self) -> None:
        super().__post_init__()
        self._refuse_layer_selection(
            "cannot apply: integer-only means every layer is integer (no float to fall back to); drop them, or use "
            "static-int8 to keep layers in float"
        )
        if self.accumulator == 16 and (self.bits, self.weight_bits) != (8, 8):
            raise UserError(
                "recipe fixed-point: a 16-bit accumulator cannot hold one product of 16-bit values: use accumulator 32"
            )
