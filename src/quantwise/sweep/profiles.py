"""Hardware profiles: which kernel families run natively on a target.

``this-machine`` is measured, not assumed. Named profiles state what their hardware has
kernels for; latency measured here says nothing about them, and the recommendation says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from quantwise.errors import UserError
from quantwise.runtime.registry import RUNTIMES


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    families: frozenset[str]  # kernel families with native kernels on the target
    runtimes: frozenset[str]  # runtimes that deploy there
    measured: bool = False
    notes: str = ""


_ALL = frozenset({"fp32", "fp16", "bf16", "int8", "int8-weight", "int4-weight", "fixed-point"})

PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("this-machine", "measured on this machine", _ALL, frozenset(RUNTIMES), measured=True),
        Profile(
            "x86-avx2",
            "x86-64 with AVX2, no VNNI",
            frozenset({"fp32", "int8", "int8-weight", "int4-weight", "fixed-point"}),
            frozenset({"onnxruntime", "torch", "torch-int8", "tflite", "llamacpp"}),
            notes="u8s8 int8 dot products can saturate without VNNI (ONNX Runtime's reduce_range exists for this); no native fp16/bf16 math",
        ),
        Profile(
            "x86-avx512-vnni",
            "x86-64 with AVX-512 VNNI",
            frozenset({"fp32", "int8", "int8-weight", "int4-weight", "bf16", "fixed-point"}),
            frozenset({"onnxruntime", "torch", "torch-int8", "tflite", "llamacpp"}),
            notes="bf16 needs AVX512_BF16 or AMX; fp16 math is emulated",
        ),
        Profile(
            "arm64",
            "64-bit Arm with dot-product instructions",
            frozenset({"fp32", "fp16", "int8", "int8-weight", "int4-weight", "fixed-point"}),
            frozenset({"onnxruntime", "torch", "torch-int8", "tflite", "llamacpp"}),
            notes="int8 via SDOT/UDOT; fp16 arithmetic on ARMv8.2+",
        ),
        Profile(
            "mcu-no-fpu",
            "microcontroller without a floating-point unit",
            frozenset({"fixed-point"}),
            frozenset({"integer"}),
            notes="integer-only fixed point is the one format offered; latency here is the NumPy reference executor's, not the "
            "microcontroller's: deploy with `quantwise export-c` and time it on the device",
        ),
        Profile(
            "gpu",
            "CUDA GPU",
            frozenset({"fp32", "fp16", "bf16", "int8", "int8-weight", "int4-weight"}),
            frozenset({"onnxruntime", "torch", "torch-int8"}),
            notes="quantwise measured nothing on a GPU here",
        ),
    )
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise UserError(f"unknown --target {name!r}: choose one of {', '.join(PROFILES)}") from None
