"""An ONNX graph imported into PyTorch for the formats only the PyTorch route builds (fixed point,
quantwise's own .tflite): exact against ONNX Runtime or refused, never approximated."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from quantwise.api import evaluate, quantize
from quantwise.errors import UnsupportedModel
from quantwise.fixedpoint.executor import execute, integer_params
from quantwise.fixedpoint.simulate import FixedPointModule, enter
from quantwise.onnxmodel import OnnxGraphModule
from quantwise.tasks.imported import imported_task
from quantwise.tasks.onnx_task import build_onnx_task
from quantwise.transform.onnx_import import import_graph


def _graph(path, softmax_axis: int | None = None, opset: int = 17) -> str:
    """Conv with TensorFlow's asymmetric "same" pads, BatchNormalization, ReLU6 as Clip, global
    pooling, Flatten and a Gemm head; optionally a Softmax over axis 1 of the 4-D conv output."""
    rng = np.random.default_rng(0)

    def init(name: str, a: np.ndarray) -> TensorProto:
        return numpy_helper.from_array(a.astype(np.float32), name)

    inits = [
        init("w", rng.normal(0, 0.3, (6, 2, 3, 3))),
        init("b", rng.normal(0, 0.1, 6)),
        init("g", rng.uniform(0.5, 1.5, 6)),
        init("beta", rng.normal(0, 0.1, 6)),
        init("mean", rng.normal(0, 0.1, 6)),
        init("var", rng.uniform(0.5, 2, 6)),
        init("lo", np.array(0.0)),
        init("hi", np.array(6.0)),
        init("fc", rng.normal(0, 0.3, (4, 6))),
        init("fcb", rng.normal(0, 0.1, 4)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="stem/conv", strides=[2, 2], pads=[0, 0, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "g", "beta", "mean", "var"], ["bn"], name="stem/bn"),
        helper.make_node("Clip", ["bn", "lo", "hi"], ["r"], name="stem/relu6"),
    ]
    last = "r"
    if softmax_axis is not None:
        nodes.append(helper.make_node("Softmax", ["r"], ["sm"], name="softmax", axis=softmax_axis))
        last = "sm"
    nodes += [
        helper.make_node("GlobalAveragePool", [last], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], name="head", transB=1),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.save(m, str(path))
    return str(path)


def test_a_graph_imports_exactly_with_its_batchnorm_folded_and_its_padding_kept(tmp_path):
    gm = OnnxGraphModule(_graph(tmp_path / "g.onnx"))
    x = torch.randn(16, 2, 8, 8)
    module = import_graph(gm, (x,))
    names = dict(module.named_children())
    assert set(names) == {"conv_pad", "conv", "relu6", "pool", "flatten", "head"}  # "stem/" dropped, bn folded
    assert module.import_max_abs_diff <= 1e-5
    qm = quantize(str(tmp_path / "g.onnx"), "fixed-point", [(x,)])  # the API imports on its own
    assert [n.op for n in qm.plan.program.nodes][:2] == ["pad", "conv2d"]
    fout = qm.plan.formats[qm.plan.program.output]
    xi = enter(x, qm.plan.formats[qm.plan.program.input]).numpy()
    got = execute(integer_params(qm.plan), xi)
    with torch.no_grad():
        sim = FixedPointModule(qm.plan, "exact")(x)
    assert np.array_equal(np.round(sim.double().numpy() / fout.scale).astype(np.int64), got)
    assert np.abs(got * fout.scale - gm(x).numpy()).max() < 8 * fout.scale


def test_an_import_that_differs_from_onnxruntime_is_refused_with_the_difference(tmp_path):
    # opset 11's Softmax normalises over every axis from `axis` on (C*H*W here), PyTorch's over one
    gm = OnnxGraphModule(_graph(tmp_path / "s.onnx", softmax_axis=1, opset=11))
    with pytest.raises(UnsupportedModel, match=r"differs from ONNX Runtime by [0-9.e-]+ \(bound"):
        import_graph(gm, (torch.randn(8, 2, 8, 8),))


def test_an_operator_the_import_does_not_take_is_named(tmp_path):
    m = onnx.load(_graph(tmp_path / "g.onnx"))
    for n in m.graph.node:
        if n.op_type == "Clip":
            n.op_type, n.name = "Sin", "stem/sin"
            del n.input[1:]
    onnx.save(m, str(tmp_path / "sin.onnx"))
    with pytest.raises(UnsupportedModel, match=r"node 'stem/sin' \(Sin\) cannot be imported into PyTorch"):
        import_graph(OnnxGraphModule(tmp_path / "sin.onnx"), (torch.randn(2, 2, 8, 8),))


def test_fixed_point_on_an_onnx_file_runs_integer_only_against_the_imported_fp32(mnist_files, tmp_path):
    from quantwise.recipes import get_recipe

    task = build_onnx_task(str(mnist_files / "m.onnx"), str(mnist_files / "d.npz"))
    torch_task = imported_task(task)
    assert imported_task(task) is torch_task  # built once per task
    kw = dict(threads=1, batch_sizes=(1,), measure_memory=False, latency_seconds=0.05)
    fp32 = evaluate(torch_task, None, "torch", **kw)
    ort = evaluate(task, None, "onnxruntime", **kw)
    assert fp32["metrics"]["accuracy"] == ort["metrics"]["accuracy"] > 0.97
    rec = evaluate(torch_task, get_recipe("fixed-point"), "integer", **kw)
    assert rec["integer_ops"]["integer"] == rec["integer_ops"]["total"] == 4
    assert abs(rec["metrics"]["accuracy"] - fp32["metrics"]["accuracy"]) <= 0.01


@pytest.mark.parametrize(
    "data, objective",
    [
        ("d.npz", "cross-entropy on the labels"),
        ("x.npy", "distillation from the FP32 model on its outputs (the data has no labels)"),
    ],
)
def test_qat_on_an_onnx_file_trains_the_imported_layers_and_runs_in_onnx_runtime(
    mnist_files, tmp_path, capsys, data, objective
):
    """QAT on a graph trains the imported layers on the calibration split (never the test set):
    on its labels, or without them by distilling from the FP32 graph; the result runs in ONNX
    Runtime with every Conv/Gemm in integer kernels and stays close to FP32."""
    import json

    from quantwise.cli import main

    out = tmp_path / "run"
    argv = ["compare", "--model", str(mnist_files / "m.onnx"), "--data", str(mnist_files / data), "--no-memory"]
    assert main([*argv, "--formats", "fp32,qat-w8a8", "--out", str(out)]) == 0, capsys.readouterr().err
    by = {r["format"]: r for r in json.loads((out / "results.json").read_text())["records"]}
    qat = by["qat-w8a8"]
    assert qat["runtime"] == "onnxruntime" and qat["integer_ops"]["integer"] == 4 and not qat["integer_ops"]["float"]
    training = qat["info"]["training"]
    assert training["objective"] == objective and training["train_examples"] == 100  # the calibration quarter
    metric = "accuracy" if data == "d.npz" else "cosine"
    assert qat["metrics"][metric] >= by["fp32"]["metrics"][metric] - (0.02 if metric == "accuracy" else 0.01)


def test_an_onnx_file_runs_in_litert_through_the_checked_import(mnist_files, tmp_path, capsys):
    """A plain .onnx file in LiteRT: FP32 and quantwise's own full-integer .tflite, both converted
    from the graph imported into PyTorch (exact against ONNX Runtime), every Conv/Gemm in int8."""
    import json

    from quantwise.cli import main

    out = tmp_path / "run"
    argv = ["compare", "--model", str(mnist_files / "m.onnx"), "--data", str(mnist_files / "d.npz"), "--no-memory"]
    argv += ["--formats", "fp32,static-int8-full", "--runtimes", "tflite,onnxruntime", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    by = {(r["format"], r["runtime"]): r for r in json.loads((out / "results.json").read_text())["records"]}
    assert set(by) == {("fp32", "onnxruntime"), ("fp32", "tflite"), ("static-int8-full", "tflite")}
    fp32, full = by["fp32", "tflite"], by["static-int8-full", "tflite"]
    assert fp32["status"] == full["status"] == "ok" and full["info"]["imported"]
    assert fp32["metrics"]["accuracy"] == by["fp32", "onnxruntime"]["metrics"]["accuracy"]
    assert full["integer_ops"]["integer"] == full["integer_ops"]["total"] == 4
    assert full["metrics"]["accuracy"] >= fp32["metrics"]["accuracy"] - 0.02


@pytest.mark.parametrize(
    "args",
    [
        ["--recipe", "fixed-point", "--runtime", "integer"],
        ["--recipe", "static-int8", "--quantize-outputs", "--runtime", "tflite"],
    ],
)
def test_quantize_on_an_onnx_file_takes_the_import_route_compare_takes(mnist_files, capsys, args):
    """`quantwise quantize` runs a graph's import-route formats as compare does (before: refused)."""
    import json

    from quantwise.cli import main

    argv = ["quantize", "--model", str(mnist_files / "m.onnx"), "--data", str(mnist_files / "d.npz"), "--no-memory"]
    assert main([*argv, *args, "--format", "json"]) == 0, capsys.readouterr().err
    rec = json.loads(capsys.readouterr().out)
    assert rec["status"] == "ok" and rec["runtime"] == args[-1] and rec["info"]["imported"]
    assert rec["integer_ops"]["integer"] == 4 and rec["baseline"]["metrics"]["accuracy"] > 0.97
