"""Residual adds and max-pools between quantized tensors, quantized by dataflow: where the points
go, which grid each keeps, that ONNX Runtime then runs them in int8, and that they survive a save."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from quantwise import quantize
from quantwise.api import lower
from quantwise.quantized import QuantizedModel
from quantwise.recipes import get_recipe
from quantwise.runtime.torch_sim import lower_torch

from .models import BasicBlock, _bn_stats
from .test_zoo import _task


class PoolNet(nn.Module):
    """torchvision ResNet's stem and blocks in miniature: conv-BN-ReLU, max-pool, two basic blocks
    (each calling one ``self.relu`` twice, BatchNorm called in ``forward()``), mean-pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu = nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(BasicBlock(16), BasicBlock(16))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(x.mean((2, 3)))


def _net() -> tuple[nn.Module, list[tuple[torch.Tensor, ...]]]:
    torch.manual_seed(0)
    model = _bn_stats(PoolNet()).eval()
    x = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return model, [(x[:16],), (x[16:],)]


def _sqnr(ref: np.ndarray, out: np.ndarray) -> float:
    return float(10 * np.log10((ref**2).mean() / max(((ref - out) ** 2).mean(), 1e-30)))


def test_adds_and_the_max_pool_are_points_and_consumers_keep_their_source_grid():
    model, batches = _net()
    qm = quantize(model, "static-int8", batches[:1])
    assert qm.info["quantized_between_layers"] == {
        "adds": 2,
        "concats": 0,
        "max_pools": 1,
        "layers_on_their_source_grid": 4,
    }
    stem = qm.layers["conv1"].output
    assert qm.layers["conv1"].fused_relu == "relu" and stem is not None and stem.zero_point == 0
    assert qm.activations["maxpool"] == stem  # a max of grid values is on the grid
    assert qm.layers["layer1.0.conv1"].input == stem  # the pooled tensor, read on its producer's grid
    adds = [n for n in qm.activations if n != "maxpool"]
    assert len(adds) == 2 and all("relu" in n for n in adds)  # after the ReLU that follows each add
    assert qm.layers["layer1.1.conv1"].input == qm.activations[adds[0]]
    # the block's shared ReLU: fused into conv1's output and still in the model for the add
    assert qm.layers["layer1.0.conv1"].activation_shared and qm.layers["layer1.0.conv1"].activation == "relu"
    sim = lower_torch(qm)
    off = lower_torch(qm, quantizers=False)
    with torch.no_grad():
        ref, out, same = model(*batches[1]).numpy(), sim(*batches[1]).numpy(), off(*batches[1]).numpy()
        held = qm.model(*batches[1]).numpy()  # BatchNorm folded, the quantized weights' values
    assert np.abs(same - held).max() <= 1e-5 * np.abs(held).max()  # every quantizer and point disabled
    assert _sqnr(ref, out) > 20.0


def _optimized_ops(runner) -> list[str]:
    return [n.op_type for n in onnx.load(str(runner._optimized)).graph.node]


@pytest.mark.parametrize("quantize_adds", [True, False])
def test_onnxruntime_runs_the_adds_and_the_pool_in_int8(quantize_adds: bool, tmp_path: Path):
    model, batches = _net()
    qm = quantize(model, get_recipe("static-int8", quantize_adds=quantize_adds), batches[:1])
    runner, _ = lower(qm, _task(model, batches), "onnxruntime", tmp_path)
    ops = _optimized_ops(runner)
    if quantize_adds:
        assert ops.count("QLinearAdd") == 2 and "Add" not in ops and "Relu" not in ops, ops
        assert ops.count("DequantizeLinear") == 1  # once, before the mean-pool: int8 from the stem on
    else:
        assert "QLinearAdd" not in ops and ops.count("Add") == 2 and not qm.activations
    with torch.no_grad():
        sim = lower_torch(qm)(*batches[1]).numpy()
    assert _sqnr(sim, runner.run(batches[1])) > 30.0


def test_torch_int8_computes_the_points_as_the_simulation(tmp_path: Path):
    model, batches = _net()
    qm = quantize(model, "static-int8", batches[:1])
    runner, _ = lower(qm, _task(model, batches), "torch-int8", tmp_path)
    with torch.no_grad():
        sim = lower_torch(qm)(*batches[1]).numpy()
    assert _sqnr(sim, np.asarray(runner.run(batches[1]))) > 30.0


def test_points_survive_save_and_load(tmp_path: Path):
    model, batches = _net()
    qm = quantize(model, "static-int8", batches[:1])
    loaded = QuantizedModel.load(qm.save(tmp_path / "q"), copy.deepcopy(model))
    assert loaded.activations == qm.activations
    assert {n: lq.activation_shared for n, lq in loaded.layers.items()} == {
        n: lq.activation_shared for n, lq in qm.layers.items()
    }
    with torch.no_grad():
        assert torch.equal(lower_torch(loaded)(*batches[1]), lower_torch(qm)(*batches[1]))
