"""What every runtime offers: run a batch, save the artifact, say what runs in integer kernels."""

from __future__ import annotations

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
