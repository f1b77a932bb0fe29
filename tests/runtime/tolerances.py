"""How far each runtime may be from the PyTorch simulation of the same QuantizedModel, and why.

Kept as data in one place: ``test_parity_matrix.py`` reads it. ``rel`` bounds the largest output
difference relative to the output's range; ``agree`` is the least share of examples whose
top-1 class is the same.
"""

from __future__ import annotations

from typing import NamedTuple


class Tolerance(NamedTuple):
    rel: float
    agree: float
    why: str


EXACT = Tolerance(0.0, 1.0, "the same PyTorch ops on the same tensors")

# (runtime, kind) -> tolerance; kind is "float" (fp32/fp16/weight-only: float kernels), "int8"
# (static or dynamic activations), "fixed-point".
TOLERANCES: dict[tuple[str, str], Tolerance] = {
    ("torch", "float"): EXACT,
    ("torch", "int8"): EXACT,
    ("torch", "fixed-point"): EXACT,
    ("onnxruntime", "float"): Tolerance(
        1e-4, 1.0, "float kernels sum in another order (fp16 weights are cast up exactly, so the same bound holds)"
    ),
    ("onnxruntime", "int8"): Tolerance(
        0.05,
        0.98,
        "QLinearConv/QGemm requantize with one folded multiplier, the simulation rounds (acc*s + bias)/s_out: "
        "one output step apart next to rounding ties, carried by later layers",
    ),
    ("onnxruntime", "fixed-point"): Tolerance(
        0.05, 0.98, "ONNX Runtime rescales in float32 where the plan uses an int32 multiplier and shift: one step"
    ),
    ("torch-int8", "int8"): Tolerance(
        0.05, 0.98, "oneDNN requantizes in float32 with its own rounding: one output step next to ties"
    ),
    ("integer", "fixed-point"): Tolerance(0.0, 1.0, "the exact simulation is bit-exact with the integer executor"),
    ("tflite", "float"): Tolerance(1e-4, 1.0, "LiteRT's float kernels sum in another order"),
    ("tflite", "int8"): Tolerance(
        0.08,
        0.97,
        "LiteRT runs uint8 grids as the identical int8 grids but requantizes with its own fixed-point multipliers; "
        "dynamic-range kernels quantize activations with their own ranges, not ours",
    ),
}


FP16 = Tolerance(
    2e-3,
    1.0,
    "the simulation computes in float16; ONNX Runtime's CPU kernels lack fp16 and LiteRT computes in float32 from "
    "float16-stored weights: fp16's relative step (2^-11) compounding over a few layers",
)
for _rt in ("torch", "onnxruntime", "tflite"):
    TOLERANCES[(_rt, "fp16")] = EXACT if _rt == "torch" else FP16


def kind_of(family: str) -> str:
    if family in ("fixed-point", "fp16"):
        return family
    return "int8" if family == "int8" else "float"
