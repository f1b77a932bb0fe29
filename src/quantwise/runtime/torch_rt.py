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
    """Runs a module in PyTorch. For quantized layers this is fake-quant *simulation*: the
    arithmetic is float, so it reports zero integer kernels, honestly."""

    runtime = "torch"

    def __init__(self, module: nn.Module, artifact: Path, threads: int = 1) -> None:
        self.module = module.eval()
        self.artifact = artifact
        self.threads = threads

    def run(self, batch: tuple[torch.Tensor, ...]) -> np.ndarray:
        torch.set_num_threads(self.threads)
        with torch.inference_mode():
            return self.module(*batch).to(torch.float32).numpy()

    def integer_ops(self) -> dict[str, Any]:
        ops = IntegerOps()
        for name, m in self.module.named_modules():
            if isinstance(m, (nn.Linear, nn.Conv2d, QLinear, QConv2d)):
                ops.total += 1
                ops.float_ops.append(name)
        ops.kernels = {"float (simulated quantization)": ops.total}
        return ops.to_dict()


def save_torch_artifact(qm: QuantizedModel, out_dir: Path) -> Path:
    """The torch runtime's artifact is the QuantizedModel folder itself (safetensors + JSON)."""
    return qm.save(out_dir / "quantized")
