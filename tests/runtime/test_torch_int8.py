"""PyTorch's real int8 kernels (oneDNN) against the simulation of the same QuantizedModel.

Static layers: within one output step (oneDNN requantizes with a folded multiplier, as ONNX
Runtime does). Dynamic layers: the run-time activation parameters are chosen by the
simulation's own rule, so outputs differ only by float32 rescaling order.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantwise import get_recipe, quantize
from quantwise.api import evaluate, lower
from quantwise.errors import Unsupported
from quantwise.runtime.torch_sim import lower_torch


@pytest.mark.parametrize("recipe", ["static-int8", "dynamic-int8"])
def test_cnn_int8_kernels_track_the_simulation(mnist, recipe, tmp_path):
    qm = quantize(mnist.model, recipe, mnist.calibration)
    runner, module = lower(qm, mnist, "torch-int8", tmp_path)
    sim = lower_torch(qm)
    x = mnist.eval_batches[0][0]
    with torch.no_grad():
        ref = sim(x).numpy()
    out = runner.run((x,))
    assert np.mean(out.argmax(1) == ref.argmax(1)) >= 0.995
    assert np.abs(out - ref).max() <= 0.05 * np.abs(ref).max()
    ops = runner.integer_ops()
    assert ops["integer"] == (4 if recipe == "static-int8" else 2)


def test_transformer_dynamic_int8_kernels(bbc_small, tmp_path):
    rec = evaluate(bbc_small, "dynamic-int8", "torch-int8", measure_memory=False, batch_sizes=(1,), latency_seconds=0.2)
    assert rec["integer_ops"]["integer"] == 37 and rec["integer_ops"]["total"] == 37
    assert rec["metrics"]["cosine_to_fp32"] > 0.99


def test_formats_without_int8_kernels_are_refused_with_the_reason(mnist, tmp_path):
    for recipe, why in [
        (get_recipe("weight-int4"), "int4 weights have no PyTorch int8 kernel"),
        (get_recipe("fp16"), "float cast"),
        (get_recipe("static-int8", symmetric_activations=True), "uint8 activations"),
    ]:
        qm = quantize(mnist.model, recipe, mnist.calibration)
        with pytest.raises(Unsupported, match=why):
            lower(qm, mnist, "torch-int8", tmp_path)


def test_kernels_take_plain_integer_tensors_not_deprecated_quantized_ones(mnist, tmp_path):
    """oneDNN's kernels run the model's own uint8/int8 values: nothing builds the quantized tensor
    types PyTorch deprecates (torch.quantize_per_tensor warns from 2.13, pytorch/pytorch#184982)."""
    import warnings

    for recipe in ("static-int8", get_recipe("dynamic-int8", activations="per-token")):
        qm = quantize(mnist.model, recipe, mnist.calibration)
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*quantized tensor creation functions.*")
            runner, _ = lower(qm, mnist, "torch-int8", tmp_path)
            out = runner.run((mnist.eval_batches[0][0],))
        ref = lower_torch(qm)(mnist.eval_batches[0][0]).detach().numpy()
        assert np.mean(out.argmax(1) == ref.argmax(1)) >= 0.995


@pytest.mark.parametrize("recipe", ["static-int8", "dynamic-int8"])
def test_a_lowered_model_is_saved_and_loaded_with_its_kernels_packed_again(mnist, recipe, tmp_path):
    """oneDNN's packed weights are opaque tensors that pickle refuses: the peak-memory measurement
    (``torch.save`` of the lowered model) failed every torch-int8 row of ``make compare``."""
    qm = quantize(mnist.model, recipe, mnist.calibration)
    runner, module = lower(qm, mnist, "torch-int8", tmp_path)
    torch.save(module, tmp_path / "m.pt")
    again = torch.load(tmp_path / "m.pt", weights_only=False)
    x = mnist.eval_batches[0][0]
    with torch.no_grad():
        assert torch.equal(again(x), module(x))
    rec = evaluate(mnist, recipe, "torch-int8", batch_sizes=(1,), latency_seconds=0.2)  # memory measured
    assert rec["peak_memory_bytes"] and rec["peak_memory_bytes"] > 0
