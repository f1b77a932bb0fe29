"""The PyTorch runtime: the simulation module, executed eagerly on the CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from quantwise.quantized import QuantizedModel
from quantwise.runtime.base import IntegerOps
from quantwise.runtime.qmodules import QConv2d, QLinear


class TorchRunner:
    """Runs a module in PyTorch eagerly. In the ``torch`` runtime quantized layers are fake-quant
    *simulation* (float arithmetic, counted as float); in ``torch-int8`` they are PyTorch's
    int8 CPU kernels (counted as integer)."""

    def __init__(self, module: nn.Module, artifact: Path, threads: int = 1, runtime: str = "torch") -> None:
        self.runtime = runtime
        self.module = module.eval()
        self.artifact = artifact
        self.threads = threads

    def run(self, batch: tuple[torch.Tensor, ...]) -> np.ndarray:
        torch.set_num_threads(self.threads)
        with torch.inference_mode():
            return self.module(*batch).to(torch.float32).numpy()

    def integer_ops(self) -> dict[str, Any]:
        from quantwise.fixedpoint.simulate import FixedPointModule
        from quantwise.runtime.torch_int8 import Int8Conv2d, Int8Linear

        ops = IntegerOps()
        kinds: dict[str, int] = {}
        if isinstance(self.module, FixedPointModule):  # integer arithmetic simulated with float64/int64 torch ops
            heavy = [n.layer for n in self.module.plan.program.heavy()]
            return IntegerOps(0, len(heavy), heavy, {"exact fixed-point simulation (float64 accumulation)": len(heavy)}).to_dict()
        for name, m in self.module.named_modules():
            if isinstance(m, (Int8Linear, Int8Conv2d)):
                ops.integer += 1
                kind = f"int8 {type(m).__name__[4:]} ({getattr(m, 'mode', 'static')})"
            elif isinstance(m, (QLinear, QConv2d)):
                ops.float_ops.append(name)
                kind = "float (simulated quantization)"
            elif isinstance(m, (nn.Linear, nn.Conv2d)):
                ops.float_ops.append(name)
                kind = "float"
            else:
                continue
            ops.total += 1
            kinds[kind] = kinds.get(kind, 0) + 1
        ops.kernels = kinds
        return ops.to_dict()


def save_torch_artifact(qm: QuantizedModel, out_dir: Path) -> Path:
    """The torch runtime's artifact is the QuantizedModel folder itself (safetensors + JSON)."""
    return qm.save(out_dir / "quantized")
