"""The PyTorch runtime: the simulation module, executed eagerly on the CPU."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from quantwise.quantized import QuantizedModel
from quantwise.quiet import hf_quiet
from quantwise.runtime.base import IntegerOps, RuntimeSpec, load_exported
from quantwise.runtime.qmodules import QConv2d, QLinear


class _Clock:
    """A transformers streamer that only notes when each new token arrives (the first put is the prompt)."""

    def __init__(self, times: list[float]) -> None:
        self.times, self.prompt_seen = times, False

    def put(self, value: Any) -> None:
        if self.prompt_seen:
            self.times.append(time.perf_counter())
        self.prompt_seen = True

    def end(self) -> None:
        pass


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
        # the thread count is the caller's: evaluate() holds torch_threads(threads) around every run
        with torch.inference_mode():
            return self.module(*batch).to(torch.float32).numpy()

    @property
    def simulated(self) -> bool:
        """Fake-quant layers compute in float: their speed is not a deployment speed."""
        return any(isinstance(m, (QLinear, QConv2d)) for m in self.module.modules())

    def generate(self, prompt: torch.Tensor, new_tokens: int, times: list[float] | None = None) -> list[int]:
        """Greedy continuation of ``prompt`` (1, S) with the model's KV cache (causal-LM tasks);
        ``times`` receives ``time.perf_counter()`` as each new token is produced."""
        lm: Any = next((m for m in self.module.modules() if hasattr(m, "generate") and hasattr(m, "config")), None)
        if lm is None:
            raise TypeError(f"{type(self.module).__name__} is not a generative model")
        eos = lm.config.eos_token_id
        with torch.inference_mode(), hf_quiet():
            out = lm.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=eos[0] if isinstance(eos, list) else eos,
                streamer=_Clock(times) if times is not None else None,
            )
        return out[0, prompt.shape[-1] :].tolist()

    def integer_ops(self) -> dict[str, Any]:
        from quantwise.fixedpoint.simulate import FixedPointModule
        from quantwise.runtime.torch_int8 import Int8Conv2d, Int8Linear

        ops = IntegerOps()
        kinds: dict[str, int] = {}
        if isinstance(self.module, FixedPointModule):  # integer arithmetic simulated with float64/int64 torch ops
            heavy = [n.layer for n in self.module.plan.program.heavy()]
            return IntegerOps(
                0, len(heavy), heavy, {"exact fixed-point simulation (float64 accumulation)": len(heavy)}
            ).to_dict()
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


def _why_not(qm: QuantizedModel | None) -> str | None:
    if qm is not None and qm.plan is not None:
        from quantwise.fixedpoint.simulate import why_not_simulate

        return why_not_simulate(qm.plan, "exact")
    return None


def _lower(
    qm: QuantizedModel | None, task: Any, workdir: Path, threads: int, batch_sizes: Any = (1,)
) -> tuple[TorchRunner, nn.Module]:
    if qm is None:
        artifact = workdir / "model.safetensors"
        save_float_model(task.model, artifact)
        return TorchRunner(task.model, artifact, threads), task.model
    module = simulation_module(qm)
    return TorchRunner(module, qm.save(workdir / "quantized"), threads), module


def simulation_module(qm: QuantizedModel) -> nn.Module:
    """What the QuantizedModel computes, in PyTorch: the fake-quant simulation, or for a fixed-point
    plan its exact integer simulation. Every other runtime's output is checked against it."""
    if qm.plan is not None:
        from quantwise.fixedpoint.simulate import FixedPointModule

        return FixedPointModule(qm.plan, "exact")
    from quantwise.runtime.torch_sim import lower_torch

    return lower_torch(qm)


def save_float_model(model: nn.Module, path: Path) -> Path:
    """The FP32 model's weights as safetensors; tied (shared) tensors are stored once."""
    from safetensors.torch import save_model

    save_model(model, str(path))
    return path


def _how(qm: QuantizedModel | None) -> tuple[str, str]:
    return "quantized/", (
        "quantwise.QuantizedModel.load('quantized', model=<fresh float model>) then "
        "quantwise.runtime.torch_sim.lower_torch(qm)"
    )


def _load(folder: Path, task: Any, threads: int = 1) -> TorchRunner:
    return TorchRunner(simulation_module(load_exported(folder, task)), folder / "quantized", threads)


SPEC = RuntimeSpec(
    name="torch",
    help="eager PyTorch: FP32, fp16/bf16, and a fake-quant simulation of integer formats (float arithmetic)",
    baseline="torch",
    colour="#d9822b",
    why_not=_why_not,
    lower=_lower,
    how_to_load=_how,
    load=_load,
)
