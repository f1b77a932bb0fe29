"""The environment a result was measured in: CPU, its int8-relevant flags, library versions, threads."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_bf16",
    "amx_int8",
    "fma",
    "asimd",
    "asimddp",
    "bf16",
)
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86's, and Arm's Features entry
_LIBS = ("quantwise", "torch", "onnx", "onnxruntime", "transformers", "numpy", "scikit-learn")


def environment(threads: int) -> dict[str, Any]:
    cpu, flags = _cpu()
    libs: dict[str, str | None] = {}
    for lib in _LIBS:
        try:
            libs[lib] = version(lib)
        except PackageNotFoundError:
            libs[lib] = None
    return {
        "cpu": cpu,
        "cpu_flags": sorted(f for f in _FLAGS if f in flags),
        "cores": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": libs,
    }


def native_bf16() -> bool | None:
    """Whether this CPU has bf16 instructions (None: /proc/cpuinfo is not readable, so unknown)."""
    _, flags = _cpu()
    return any(f in flags for f in BF16_FLAGS) if flags else None


def _cpu() -> tuple[str, set[str]]:
    """The CPU's model name and its flags from /proc/cpuinfo (empty where it cannot be read)."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return cpu, flags
