"""Every quantized record says how closely its runtime computed what the simulation says
(``info.runtime_vs_simulation``), and says ``differs`` when the runtime computes another model."""

from __future__ import annotations

import copy

import pytest
import torch

from quantwise import get_recipe, quantize
from quantwise.api import evaluate
from quantwise.runtime.onnxrt import OrtRunner, export_onnx
from quantwise.runtime.parity import MIN_AGREEMENT, runtime_vs_simulation


@pytest.mark.parametrize(
    ("recipe", "runtime"), [("static-int8", "onnxruntime"), ("dynamic-int8", "torch-int8"), ("fixed-point", "integer")]
)
def test_a_faithful_runtime_agrees_with_its_simulation(mnist, recipe, runtime) -> None:
    rec = evaluate(mnist, recipe, runtime, batch_sizes=(), measure_memory=False)
    par = rec["info"]["runtime_vs_simulation"]
    assert par["status"] == "ok", par
    assert par["top1_agreement"] >= 0.99
    assert par["max_rel_diff"] < 0.05


def test_the_simulation_itself_carries_no_comparison(mnist) -> None:
    rec = evaluate(mnist, "static-int8", "torch", batch_sizes=(), measure_memory=False)
    assert "runtime_vs_simulation" not in rec["info"]


def test_a_runtime_computing_another_model_is_said_to_differ(mnist, tmp_path) -> None:
    """The runner of a model whose classifier rows are rotated: every prediction moves to another class."""
    qm = quantize(mnist.model, get_recipe("static-int8"), mnist.calibration)
    other = copy.deepcopy(mnist.model)
    head = [m for m in other.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.weight.copy_(head.weight.roll(1, 0))
        head.bias.copy_(head.bias.roll(1, 0))
    path = export_onnx(other, mnist.latency_input(2), tmp_path / "other.onnx", mnist.input_names, mnist.dynamic_axes)
    par = runtime_vs_simulation(qm, mnist, OrtRunner(path, mnist.input_names), "onnxruntime")
    assert par is not None and par["status"] == "differs"
    assert par["top1_agreement"] < MIN_AGREEMENT and "same top-1" in par["reason"]
