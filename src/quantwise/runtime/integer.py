"""The ``integer`` runtime: a fixed-point QuantizedModel run by the integer-only reference executor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from quantwise.fixedpoint.executor import execute, integer_params
from quantwise.fixedpoint.simulate import enter
from quantwise.quantized import QuantizedModel
from quantwise.runtime.base import IntegerOps, RuntimeSpec, load_exported


class IntegerModule(nn.Module):
    """Float in, float out around the integer executor: the input is quantized at the boundary
    (on a device without an FPU the sensor delivers integers) and the integer output is scaled
    back only so float metrics can be computed; everything between is integer."""

    def __init__(self, qm: QuantizedModel) -> None:
        super().__init__()
        if qm.plan is None:
            raise RuntimeError("the integer runtime runs fixed-point models: quantize with --recipe fixed-point")
        self.params = integer_params(qm.plan)
        self.fin = qm.plan.formats[qm.plan.program.input]
        self.fout = qm.plan.formats[qm.plan.program.output]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = execute(self.params, enter(x, self.fin).numpy())
        return torch.from_numpy(y.astype(np.float64) * self.fout.scale).to(torch.float32)


class IntegerRunner:
    runtime = "integer"

    def __init__(self, module: IntegerModule, artifact: Path) -> None:
        self.module, self.artifact = module, artifact

    def run(self, batch: tuple[torch.Tensor, ...]) -> np.ndarray:
        return self.module(batch[0]).numpy()

    def integer_ops(self) -> dict[str, Any]:
        n = len(self.module.params.program.heavy())
        return IntegerOps(integer=n, total=n, kernels={"integer reference (NumPy int64)": n}).to_dict()

    def report(self) -> dict[str, Any]:
        """Per Conv2d/Linear: accumulator width (worst case and observed), saturation and overflow counts."""
        p = self.module.params
        return {name: st.to_dict(p.worst_bits[name]) for name, st in p.stats.items()}

    def reset(self) -> None:
        self.module.params.stats.clear()


def lower_integer(qm: QuantizedModel, workdir: Path) -> tuple[IntegerRunner, IntegerModule]:
    module = IntegerModule(qm)
    return IntegerRunner(module, qm.save(workdir / "quantized")), module


def _why_not(qm: QuantizedModel | None) -> str | None:
    if qm is None or qm.plan is None:
        return "the integer runtime runs fixed-point models only: use --recipe fixed-point, or another runtime"
    return None


def _lower(
    qm: QuantizedModel, task: Any, workdir: Path, threads: int, batch_sizes: Any = (1,)
) -> tuple[IntegerRunner, IntegerModule]:
    return lower_integer(qm, workdir)


def _how(qm: QuantizedModel | None) -> tuple[str, str]:
    from quantwise.fixedpoint.cexport import BUILD

    return "c/", (
        f"compile c/ into the firmware and call qw_model_run (host test: cd c && {BUILD}); "
        "quantized/ holds the QuantizedModel"
    )


def _load(folder: Path, task: Any, threads: int = 1) -> IntegerRunner:
    qm = load_exported(folder, task)
    return IntegerRunner(IntegerModule(qm), folder / "quantized")


SPEC = RuntimeSpec(
    name="integer",
    help="fixed-point models only: the integer-only NumPy reference executor (bit-exact with the generated C)",
    baseline="torch",
    colour="#5b5b5b",
    why_not=_why_not,
    lower=_lower,
    how_to_load=_how,
    load=_load,
)
