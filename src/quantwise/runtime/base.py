"""What every runtime offers: run a batch, save the artifact, say what runs in integer kernels."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch


class Runner(Protocol):
    """A loaded model in one runtime."""

    runtime: str
    artifact: Path

    def run(self, batch: tuple[torch.Tensor, ...]) -> np.ndarray:
        """Outputs for one batch, as float32 numpy."""
        ...

    def integer_ops(self) -> dict[str, Any]:
        """Counts of heavy ops (MatMul/Gemm/Conv) in integer kernels and in total."""
        ...


@dataclass
class IntegerOps:
    """Heavy-op census of a lowered model."""

    integer: int = 0
    total: int = 0
    float_ops: list[str] = field(default_factory=list)
    kernels: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"integer": self.integer, "total": self.total, "float": self.float_ops, "kernels": self.kernels}


def load_exported(folder: Path, task: Any) -> Any:
    """The QuantizedModel an export keeps in ``folder/quantized``, on a fresh copy of the task's model."""
    from quantwise.quantized import QuantizedModel

    meta = QuantizedModel.read_meta(folder / "quantized")
    model = task.build_model()
    if "captured" in meta.get("info", {}) and task.calibration:  # quantized on its torch.export capture: again
        from quantwise.transform.capture import capture

        model, _ = capture(model, task.calibration[0])
    return QuantizedModel.load(folder / "quantized", model, meta)


def _always_available() -> str | None:
    return None


@dataclass(frozen=True)
class RuntimeSpec:
    """Everything quantwise knows about one runtime, declared in the runtime's own module.

    The CLI's choices and help, compare's runtime list, the hardware profiles, the recommender's
    baselines, the report's colours and the export's load instructions all read these fields.

    Attributes:
        name: what users type (``--runtime NAME``).
        help: one line for ``--help``.
        baseline: the runtime whose FP32 record this one's speedups are measured against.
        colour: the report's colour for this runtime.
        why_not: capability check run before any work: ``why_not(qm)`` (``qm`` None for FP32)
            returns None when the runtime can run it faithfully, else the one-line reason.
        lower: ``lower(qm, task, workdir, threads, batch_sizes) -> (runner, torch_module)``.
        how_to_load: ``how_to_load(qm) -> (artifact, instruction)`` for an exported model.
        memory_loads_artifact: the memory child loads the saved artifact (else the pickled
            module quantwise itself wrote to its temporary folder).
        available: None when installed, else what to install.
        load: ``load(folder, task, threads) -> runner`` reads an exported folder back exactly as
            ``how_to_load`` tells a user to (compare re-verifies its export with it).
        fp32_tolerance: how far (relative to the output range, first evaluation batch) this
            runtime's FP32 model may be from PyTorch's before the fidelity guard refuses it.
    """

    name: str
    help: str
    baseline: str
    colour: str
    why_not: Callable[[Any], str | None]
    lower: Callable[..., tuple[Any, Any]]
    how_to_load: Callable[[Any], tuple[str, str]]
    memory_loads_artifact: bool = False
    available: Callable[[], str | None] = _always_available
    load: Callable[..., Any] | None = None
    fp32_tolerance: float = 1e-5


def saturating_weights(qm: Any) -> str | None:
    """Why an x86 int8 runtime (ONNX Runtime, PyTorch's oneDNN kernels) would not compute ``qm``'s simulation
    on this CPU: without VNNI their u8 x s8 kernels add pairs of products in 16 bits and saturate,
    which int8 weights within [-63, 63] cannot trigger (``reduce_range``). None when it cannot happen.

    Measured on this project's AVX2 machine: a static-int8 CNN with 8-bit weights 0.14 of the output
    range away from the simulation in both runtimes, 1e-7 (ONNX Runtime) with 7-bit weights.
    """
    from quantwise.nnutil import int8_dots_saturate

    if qm is None or not int8_dots_saturate():
        return None
    if qm.plan is not None:
        weights = {n: lp.weight for n, lp in qm.plan.layers.items()}
    else:
        weights = {
            n: lq.weight_q
            for n, lq in qm.layers.items()
            if lq.mode in ("static", "dynamic") and lq.weight_qtype == "int8" and lq.kind != "embedding"
        }
    wide = [n for n, w in weights.items() if int(w.abs().max()) > 63]
    if not wide:
        return None
    more = f" and {len(wide) - 1} more" if len(wide) > 1 else ""
    fix = "run the plan in the integer executor" if qm.plan is not None else "build it with --reduce-range on (or auto)"
    return (
        f"this CPU has no VNNI: the runtime's u8 x s8 int8 kernels saturate 16-bit pair sums with the 8-bit weights "
        f"of {wide[0]}{more}, so it would not compute what the simulation does: {fix}"
    )
