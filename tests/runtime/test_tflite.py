"""The tflite runtime: litert-torch conversion with quantwise's own parameters, LiteRT's reference kernels."""

from __future__ import annotations

import litert_torch  # noqa: F401  (the tflite extra is part of the README's set-up: missing is a failure, not a skip)
import numpy as np
import pytest
import torch
from torch import nn

from quantwise.api import evaluate, lower, quantize
from quantwise.errors import UnsupportedModel, UserError
from quantwise.recipes import get_recipe
from quantwise.runtime.tflite import TfliteRunner, read_quantization
from quantwise.runtime.torch_sim import lower_torch


def _reference(runner):
    """The same files on LiteRT's reference kernels (the default resolver may use XNNPACK)."""
    return TfliteRunner(runner.paths, 1, reference=True)


def _run(runner, batches):
    return np.concatenate([runner.run(b) for b in batches])


def test_fp32_tflite_matches_pytorch(mnist, tmp_path):
    runner, _ = lower(None, mnist, "tflite", tmp_path)
    ref = _reference(runner)
    batches = mnist.eval_batches[:1]
    with torch.no_grad():
        want = torch.cat([mnist.model(*b) for b in batches]).numpy()
    got = _run(ref, batches)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    assert runner.integer_ops()["integer"] == 0 and runner.integer_ops()["total"] == 4


def test_full_integer_tflite_carries_our_scales_and_matches_the_simulation(mnist, tmp_path):
    qm = quantize(mnist.model, get_recipe("static-int8", quantize_outputs=True), mnist.calibration)
    runner, _ = lower(qm, mnist, "tflite", tmp_path)
    rep = runner.report(qm)
    assert rep["quantwise_scales"]["matched"] == sorted(qm.layers, key=list(qm.layers).index)
    assert rep["quantwise_scales"]["converter_quantized_weights"] == []
    assert set(rep["tensors_by_dtype"]) <= {"int8", "int32"}  # no float tensor anywhere: input and output are int8 too
    assert runner.integer_ops()["integer"] == runner.integer_ops()["total"] == 4
    # the file holds the very numbers of the QuantizedModel: first layer's input grid, weight scales
    q = read_quantization(runner.artifact)
    w0 = qm.layers["features.0"].weight_scale.numpy()
    assert any(np.array_equal(np.float32(v["scales"]), w0.astype(np.float32)) for v in q.values())
    # on LiteRT's reference kernels, within one output step of the PyTorch simulation
    step = qm.layers["classifier.2"].output.scale
    got = _run(_reference(runner), mnist.eval_batches[:1])
    with torch.no_grad():
        want = lower_torch(qm)(mnist.eval_batches[0][0]).numpy()
    assert np.abs(got - want).max() <= 1.001 * step  # one output step (float rounding of the step itself)
    assert (got.argmax(1) == want.argmax(1)).mean() == 1.0


def test_dynamic_range_tflite_keeps_our_weight_scales_and_names_the_converters_own(mnist, tmp_path):
    qm = quantize(mnist.model, "dynamic-int8", mnist.calibration)
    runner, _ = lower(qm, mnist, "tflite", tmp_path)
    check = runner.report(qm)["quantwise_scales"]
    assert set(check["matched"]) == {"classifier.0", "classifier.2"}
    # quantwise keeps convolutions float in dynamic INT8; LiteRT's dynamic-range mode quantizes them itself
    assert len(check["converter_quantized_weights"]) == 2
    ops = runner.integer_ops()
    assert ops["integer"] == 4 and ops["kernels"].get("FULLY_CONNECTED dynamic-range int8") == 2


def test_refusals_are_one_line_user_errors(mnist, tmp_path):
    with pytest.raises(UserError, match="no weight-only int8 path"):
        lower(quantize(mnist.model, "weight-int8"), mnist, "tflite", tmp_path)
    with pytest.raises(UserError, match="bf16 has no TFLite"):
        lower(quantize(mnist.model, "bf16"), mnist, "tflite", tmp_path)

    class DataDependent(nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # a Python branch on data: torch.export cannot capture it
                return x.flatten(1)[:, :10]
            return -x.flatten(1)[:, :10]

    import dataclasses

    task = dataclasses.replace(mnist, model=DataDependent())
    with pytest.raises(
        UnsupportedModel, match="litert-torch cannot convert this model: .*onnxruntime runtime may run it"
    ):
        lower(None, task, "tflite", tmp_path)


def test_missing_extra_names_it(monkeypatch):
    import sys

    from quantwise.runtime.tflite import check_tflite_available
    from quantwise.sweep.formats import select_formats

    monkeypatch.setitem(sys.modules, "litert_torch", None)
    with pytest.raises(UserError, match=r"pip install 'quantwise\[tflite\]'"):
        check_tflite_available()
    with pytest.raises(UserError, match=r"quantwise\[tflite\]"):
        select_formats("fp32", "tflite")
    assert all(r != "tflite" for _, r in select_formats("fp32", None))  # the default set runs what is installed


def test_bbc_dynamic_range_tflite(bbc_small, tmp_path):
    rec = evaluate(bbc_small, "dynamic-int8", "tflite", batch_sizes=(1,), measure_memory=False, latency_seconds=0.3)
    assert rec["integer_ops"]["integer"] == 36  # every Linear; attention's two matmuls per layer stay float
    assert rec["metrics"]["cosine_to_fp32"] > 0.99
    check = rec["tflite"]["quantwise_scales"]
    # 36 Linear and 3 int8 embedding tables; the pooler is not on the mean-pooled path, so not in the graph
    assert len(check["matched"]) == 39 and check["not_in_file"] == ["encoder.pooler.dense"]


def test_qat_with_quantized_outputs_is_full_integer_in_tflite(mnist, tmp_path, monkeypatch):
    from quantwise.api import build_quantized

    monkeypatch.setenv("QUANTWISE_CACHE", str(tmp_path / "cache"))
    counts = {}
    for full in (False, True):
        qm = build_quantized(mnist, get_recipe("qat-w8a8", steps=2, quantize_outputs=full))
        assert all(lq.output is not None for lq in qm.layers.values()) == full
        runner, _ = lower(qm, mnist, "tflite", tmp_path / str(full))
        counts[full] = (runner.integer_ops()["integer"], runner.integer_ops()["total"])
    assert counts[True] == (4, 4)  # every heavy op in int8 kernels
    assert counts[False][0] < 4  # without an output scale the last layer stays float
    with pytest.raises(UserError, match="quantize_outputs needs quantized activations"):
        get_recipe("qat-w4", quantize_outputs=True)
