"""The runtime registry: every runtime quantwise can lower to, listed explicitly.

Adding a runtime is one module that declares a :class:`~quantwise.runtime.base.RuntimeSpec`
named ``SPEC``, plus one line in ``_SPECS`` below. Everything that names runtimes (the CLI's
choices and help, compare, the hardware profiles, the recommender's baselines, the report's
colours, the export's load instructions) reads this registry.
"""

from __future__ import annotations

from quantwise.errors import Unsupported, UserError
from quantwise.runtime import integer, llamacpp, onnxrt, tflite, torch_int8, torch_rt
from quantwise.runtime.base import RuntimeSpec

_SPECS: tuple[RuntimeSpec, ...] = (
    torch_rt.SPEC,
    torch_int8.SPEC,
    onnxrt.SPEC,
    integer.SPEC,
    tflite.SPEC,
    llamacpp.SPEC,
)

RUNTIMES: dict[str, RuntimeSpec] = {s.name: s for s in _SPECS}


def get_runtime(name: str) -> RuntimeSpec:
    """The runtime called ``name``; an unknown name is a user error listing the known ones."""
    try:
        return RUNTIMES[name]
    except KeyError:
        raise UserError(f"unknown runtime {name!r}: choose one of {', '.join(RUNTIMES)}") from None


def baseline_runtime(name: str) -> str:
    """The runtime whose FP32 record ``name``'s speedups are measured against."""
    return RUNTIMES[name].baseline if name in RUNTIMES else name


def check_can_run(name: str, qm: object) -> None:
    """Raise :class:`Unsupported` with the runtime's reason when it cannot run ``qm`` (None: FP32)."""
    spec = get_runtime(name)
    missing = spec.available()
    if missing:
        raise UserError(missing)
    recipe = getattr(qm, "recipe", None)
    if getattr(recipe, "kind", None) == "tflite-converter" and name != "tflite":
        raise Unsupported(f"{name}: TensorFlow's TFLiteConverter formats run in LiteRT: use --runtime tflite")
    reason = spec.why_not(qm)
    if reason:
        raise Unsupported(f"{name}: {reason}" if not reason.startswith(name) else reason)


def runtime_help() -> str:
    """One line per runtime, for ``--runtime`` help."""
    return "; ".join(f"{s.name}: {s.help}" for s in _SPECS)
