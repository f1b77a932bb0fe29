"""An ONNX file quantized as a graph, run in ONNX Runtime, against the PyTorch route on the same model.

The mnist CNN is exported to ONNX here (a real trained model, real digits). Quantizing that
file as a graph and quantizing the PyTorch module are two routes to one QuantizedModel: the
integer weights are equal, the scales equal to float rounding, and the two lowered files compute
the same outputs in ONNX Runtime. Weight-only graphs are checked against the FP32 graph with its
weights replaced by their dequantized values (what MatMulNBits must compute).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantwise import get_recipe, quantize
from quantwise.api import lower
from quantwise.onnxmodel import OnnxGraphModule
from quantwise.runtime.onnx_graph import write_graph
from quantwise.runtime.onnxrt import OrtRunner, export_onnx

RECIPES = {
    "static-int8": get_recipe("static-int8"),
    "dynamic-int8": get_recipe("dynamic-int8"),
    "weight-int8": get_recipe("weight-int8"),
    "weight-int4-g32": get_recipe("weight-int4", group_size=32),
}


@pytest.fixture(scope="module")
def mnist_onnx(mnist, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "mnist.onnx"
    export_onnx(mnist.model, mnist.calibration[0], path, ["image"], {"image": {0: "batch"}}, ["logits"])
    return OnnxGraphModule(path)


def _run(path, batch):
    return OrtRunner(path, ["image"]).run(batch)


def test_the_graph_module_is_the_file(mnist, mnist_onnx):
    b = mnist.eval_batches[0]
    with torch.no_grad():
        ref = mnist.model(*b).numpy()
    np.testing.assert_allclose(mnist_onnx(*b).numpy(), ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("scheme", list(RECIPES))
def test_the_graph_route_builds_what_the_pytorch_route_builds(mnist, mnist_onnx, scheme, tmp_path):
    recipe = RECIPES[scheme]
    from_graph = quantize(mnist_onnx, recipe, mnist.calibration)
    from_torch = quantize(mnist.model, recipe, mnist.calibration)
    assert len(from_graph.layers) == len(from_torch.layers) == (4 if scheme in ("static-int8", "weight-int8") else 2)
    assert len(from_graph.skipped) == len(from_torch.skipped) == 4 - len(from_graph.layers)  # convs, with reasons
    for g, t in zip(from_graph.layers.values(), from_torch.layers.values(), strict=True):
        assert torch.equal(g.weight_q, t.weight_q)
        torch.testing.assert_close(g.weight_scale, t.weight_scale, rtol=1e-6, atol=0)
        assert (g.input is None) == (t.input is None)  # the same layers take a static input scale
        if t.input is not None:
            torch.testing.assert_close(g.input.scale, t.input.scale, rtol=1e-5, atol=0)
            assert g.input.zero_point == t.input.zero_point
    graph_file = write_graph(from_graph, mnist_onnx, tmp_path / "g.onnx")
    runner, _ = lower(from_torch, mnist, "onnxruntime", tmp_path / "t")
    for b in mnist.eval_batches:
        out, ref = _run(graph_file, b), runner.run(b)
        # the same integer arithmetic; static outputs may sit one requantization step apart where
        # ONNX Runtime's fused kernels round next to a tie
        tol = 0.02 if scheme == "static-int8" else 1e-4
        assert np.abs(out - ref).max() <= tol * np.abs(ref).max(), scheme
        assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.99


@pytest.mark.parametrize("scheme", ["weight-int8", "weight-int4-g32"])
def test_weight_only_graph_computes_the_dequantized_weights(mnist, mnist_onnx, scheme, tmp_path):
    """Reference: the FP32 graph with each weight replaced by scale * (q - zero_point)."""
    import copy

    import onnx
    from onnx import numpy_helper

    qm = quantize(mnist_onnx, RECIPES[scheme], mnist.calibration)
    ref_proto = copy.deepcopy(mnist_onnx.proto)
    inits = {t.name: t for t in ref_proto.graph.initializer}
    nodes = {n.name: n for n in ref_proto.graph.node}
    for name, lq in qm.layers.items():
        w = inits[nodes[name].input[1]]
        dq = lq.dequantized_weight().numpy().astype(np.float32)
        transposed = nodes[name].op_type == "Gemm" and not any(
            a.name == "transB" and a.i for a in nodes[name].attribute
        )
        w.CopyFrom(numpy_helper.from_array(dq.T.copy() if transposed else dq.reshape(list(w.dims)), w.name))
    onnx.save(ref_proto, str(tmp_path / "ref.onnx"))
    path = write_graph(qm, mnist_onnx, tmp_path / "q.onnx")
    kinds = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ("MatMulNBits" in kinds) == (scheme == "weight-int4-g32")
    for b in mnist.eval_batches:
        out, ref = _run(path, b), _run(tmp_path / "ref.onnx", b)
        assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()


def test_lowered_files_drop_the_float_weights_they_replace(mnist, mnist_onnx, tmp_path):
    fp32 = write_graph(None, mnist_onnx, tmp_path / "fp32.onnx").stat().st_size
    for s, r in RECIPES.items():
        p = write_graph(quantize(mnist_onnx, r, mnist.calibration), mnist_onnx, tmp_path / f"{s}.onnx")
        assert p.stat().st_size < fp32 / (5 if s == "weight-int4-g32" else 3), s
    half = write_graph(quantize(mnist_onnx, "fp16"), mnist_onnx, tmp_path / "fp16.onnx")
    assert half.stat().st_size < fp32 * 0.55
    b = mnist.eval_batches[0]
    out, ref = _run(half, b), mnist_onnx(*b).numpy()
    assert np.abs(out - ref).max() <= 5e-3 * np.abs(ref).max()
