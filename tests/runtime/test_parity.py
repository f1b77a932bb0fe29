"""ONNX Runtime against the PyTorch simulation of the same QuantizedModel.

Tolerances, and why:
- every quantized layer run alone in ONNX Runtime on the activations it sees inside the
  model: equal up to float32 rounding (1e-5 relative), except that a layer whose output is
  quantized (QLinearConv/QGemm) may differ by one output step: ONNX Runtime requantizes
  with one folded multiplier ``acc * s_in * s_w / s_out`` while the simulation rounds
  ``(acc * s_in * s_w + bias) / s_out``, which disagree next to rounding ties (under 1% of
  elements);
- the whole CNN: the same (1e-5 relative); with per-token dynamic activations the rows are
  quantized with their own small scales, and the last-bit differences of ONNX Runtime's float
  convolutions upstream move an input across a rounding boundary now and then: one step of
  one row, bounded here at 2e-4 of the output range;
- the whole 6-layer transformer: LayerNorm, GELU and softmax differ between the two
  runtimes in the last float bits (~1e-7); now and then that moves an activation across a
  rounding boundary, a one-step difference at one layer that later layers carry along. So
  the end-to-end bound is on the embedding: cosine(ORT, simulation) >= 0.99 for every
  document, and the classifier's predictions agree.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantwise import get_recipe, quantize
from quantwise.api import lower
from quantwise.runtime.onnxrt import OrtRunner, export_onnx
from quantwise.runtime.qmodules import QConv2d, QLinear

SCHEMES = {
    "static-int8": get_recipe("static-int8"),
    "static-int8-pt-sym": get_recipe(
        "static-int8", per_channel=False, symmetric_activations=True, calibration="percentile"
    ),
    "dynamic-int8": get_recipe("dynamic-int8"),
    "dynamic-int8-per-token": get_recipe("dynamic-int8", activations="per-token"),
    "weight-int8": get_recipe("weight-int8"),
    "weight-int4-g32": get_recipe("weight-int4", group_size=32),
    "weight-int4-gptq": get_recipe("weight-int4", group_size=64, method="gptq"),
}


def _lowered(task, recipe, tmp_path):
    qm = quantize(task.model, recipe, task.calibration) if recipe else None
    runner, module = lower(qm, task, "onnxruntime", tmp_path)
    return qm, runner, module


@pytest.mark.parametrize("task_name", ["mnist", "bbc_small"])
def test_fp32_export_matches_pytorch(task_name, request, tmp_path):
    task = request.getfixturevalue(task_name)
    _, runner, module = _lowered(task, None, tmp_path)
    for b in task.eval_batches[:2]:
        with torch.no_grad():
            ref = module(*b).numpy()
        np.testing.assert_allclose(runner.run(b), ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_cnn_end_to_end_parity(mnist, scheme, tmp_path):
    _, runner, module = _lowered(mnist, SCHEMES[scheme], tmp_path)
    for b in mnist.eval_batches[:2]:
        with torch.no_grad():
            ref = module(*b).numpy()
        out = runner.run(b)
        diff, scale = np.abs(out - ref).max(1), np.abs(ref).max()
        if scheme.startswith("dynamic"):
            # a row whose run-time activation scale sits next to a rounding boundary may move one step
            # (ONNX Runtime's float convolutions upstream differ from PyTorch's in the last bits; on
            # AVX2 CPUs more often than on AVX-512 ones): rare rows, each within a few steps
            assert (diff > 1e-5 * scale).mean() <= 0.02 and diff.max() <= 5e-3 * scale
        else:
            assert diff.max() <= 1e-5 * scale


@pytest.mark.parametrize("task_name", ["mnist", "bbc_small"])
@pytest.mark.parametrize("scheme", ["static-int8", "dynamic-int8", "dynamic-int8-per-token", "weight-int4-g32"])
def test_every_layer_alone_matches_simulation(task_name, scheme, request, tmp_path):
    task = request.getfixturevalue(task_name)
    qm = quantize(task.model, SCHEMES[scheme], task.calibration)
    from quantwise.runtime.torch_sim import lower_torch

    module = lower_torch(qm)
    inputs = {}
    hooks = [
        m.register_forward_pre_hook(lambda m, a, n=n: inputs.setdefault(n, a[0].detach()))
        for n, m in module.named_modules()
        if isinstance(m, (QLinear, QConv2d))
    ]
    with torch.no_grad():
        module(*task.eval_batches[0])
    for h in hooks:
        h.remove()
    assert len(inputs) == sum(lq.kind != "embedding" for lq in qm.layers.values())
    for i, (name, x) in enumerate(inputs.items()):
        layer = module.get_submodule(name)
        path = export_onnx(layer, (x,), tmp_path / f"l{i}.onnx", ["input"], {"input": {0: "batch"}})
        out = OrtRunner(path, ["input"]).run((x,))
        with torch.no_grad():
            ref = layer(x).numpy()
        diff = np.abs(out - ref)
        tol = 1e-5 * max(1.0, np.abs(ref).max())
        if layer.output_q is not None:
            step = layer.output_q.scale
            assert diff.max() <= step * (1 + 1e-4) + tol, f"{name}: more than one output step"
            assert (diff > tol).mean() < 0.01, f"{name}: too many one-step differences"
        else:
            assert diff.max() <= tol, name


@pytest.mark.parametrize(
    "scheme", ["static-int8", "dynamic-int8", "dynamic-int8-per-token", "weight-int8", "weight-int4-g32"]
)
def test_transformer_end_to_end_parity(bbc_small, scheme, tmp_path):
    _, runner, module = _lowered(bbc_small, SCHEMES[scheme], tmp_path)
    outs, refs = [], []
    for b in bbc_small.eval_batches:
        with torch.no_grad():
            refs.append(module(*b).numpy())
        outs.append(runner.run(b))
    out, ref = np.concatenate(outs), np.concatenate(refs)
    cos = (out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.99, cos.min()
    m_out, m_ref = bbc_small.score(out), bbc_small.score(ref)
    assert abs(m_out["accuracy"] - m_ref["accuracy"]) <= 1 / len(out) + 1e-9


def test_integer_kernels_are_counted_from_the_optimized_graph(mnist, bbc_small, tmp_path):
    _, runner, _ = _lowered(mnist, SCHEMES["static-int8"], tmp_path / "a")
    ops = runner.integer_ops()
    assert ops == {"integer": 4, "total": 4, "float": [], "kernels": {"QLinearConv": 2, "QGemm": 2}}
    _, runner, _ = _lowered(bbc_small, SCHEMES["dynamic-int8"], tmp_path / "b")
    ops = runner.integer_ops()
    # 36 Linear layers run as integer kernels; the 12 attention matmuls (activation x activation) stay float
    assert ops["integer"] == 36 and ops["total"] == 48 and len(ops["float"]) == 12
    _, runner, _ = _lowered(bbc_small, SCHEMES["weight-int8"], tmp_path / "c")
    assert runner.integer_ops()["integer"] == 0  # weight-only int8: dequantized, float Gemm, reported as such
