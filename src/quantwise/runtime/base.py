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

    return QuantizedModel.load(folder / "quantized", task.build_model())


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
