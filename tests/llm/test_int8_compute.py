"""Int8 compute in weight-only layers (W4A8/W8A8 by block): the simulation quantizes activations
per row and weight block exactly as ONNX Runtime's MatMulNBits does at accuracy_level=4."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from quantwise.api import evaluate, quantize
from quantwise.errors import Unsupported
from quantwise.numerics import get_qtype, quantize_tensor
from quantwise.numerics.granularity import PerGroup
from quantwise.numerics.packing import pack_matmul_nbits
from quantwise.quantized import LayerQuant
from quantwise.recipes import get_recipe
from quantwise.runtime.qfunctions import block_int8
from quantwise.runtime.torch_sim import lower_torch
from quantwise.tasks import load_task


def _matmul_nbits(x: torch.Tensor, lq: LayerQuant, bits: int, block: int, level: int) -> np.ndarray:
    n, k = lq.weight_q.shape
    packed, zp = pack_matmul_nbits(lq.weight_q, lq.weight_zero_point, bits, get_qtype(lq.weight_qtype).signed, block)
    node = helper.make_node(
        "MatMulNBits", ["x", "B", "s", "z"], ["y"], domain="com.microsoft", K=k, N=n, bits=bits, block_size=block,
        accuracy_level=level,
    )  # fmt: skip
    inits = [numpy_helper.from_array(a, name) for a, name in ((packed.numpy(), "B"), (zp.numpy(), "z"))]
    inits.append(numpy_helper.from_array(lq.weight_scale.float().reshape(-1).numpy(), "s"))
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [x.shape[0], n])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)], ir_version=9
    )
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so).run(None, {"x": x.numpy()})[0]


@pytest.mark.parametrize(("qtype", "block"), [("int4", 32), ("int4", 128), ("int8", 32), ("uint4", 64)])
def test_block_int8_is_what_matmulnbits_computes_at_accuracy_level_4(qtype: str, block: int) -> None:
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(48, 256, generator=g), 3 * torch.randn(5, 256, generator=g)
    qt = get_qtype(qtype)
    q, s, z = quantize_tensor(w, qt, PerGroup(block), qt.signed)
    lq = LayerQuant("linear", "weight_only", q, s, z, qtype, PerGroup(block))
    wd = lq.dequantized_weight().float()

    def rel(a: np.ndarray, b: torch.Tensor) -> float:
        return float(np.abs(a - b.numpy()).max() / b.abs().max())

    level4 = _matmul_nbits(x, lq, qt.bits, block, 4)
    assert rel(level4, block_int8(x, block) @ wd.t()) < 2e-6  # the simulation, to float rounding
    assert rel(level4, x @ wd.t()) > 1e-3  # and not the float-activation product (level 0)
    assert rel(_matmul_nbits(x, lq, qt.bits, block, 0), x @ wd.t()) < 2e-6


@pytest.fixture(scope="module")
def tiny_task(tiny_llama: Path, lm_text: Path):
    return load_task(model=str(tiny_llama), data=str(lm_text))


def test_w4a8_runs_in_onnx_runtime_as_the_simulation_computes(tiny_task, tmp_path: Path) -> None:
    recipe = get_recipe("w4a16", group_size=32, int8_compute=True)
    assert recipe.name == "w4a8-block"
    qm = quantize(tiny_task.model, recipe, tiny_task.calibration)
    plain = quantize(tiny_task.model, get_recipe("w4a16", group_size=32), tiny_task.calibration)
    x = tiny_task.eval_batches[0][0]
    with torch.no_grad():
        sim, sim_plain = lower_torch(qm)(x), lower_torch(plain)(x)
    assert float((sim - sim_plain).abs().max()) > 1e-4  # the activations are quantized in the simulation
    kw = {"measure_memory": False, "latency_seconds": 0.1, "batch_sizes": (1,), "quantized": qm}
    rec = evaluate(tiny_task, recipe, "onnxruntime", out=tmp_path / "o", **kw)
    s = evaluate(tiny_task, recipe, "torch", **kw)
    ops = rec["integer_ops"]
    assert ops["kernels"].get("MatMulNBits (int8 compute)") == 15 and ops["integer"] == 15  # attention stays float
    levels = {
        a.i
        for f in (tmp_path / "o").rglob("*.onnx")
        for n in onnx.load(str(f), load_external_data=False).graph.node
        if n.op_type == "MatMulNBits"
        for a in n.attribute
        if a.name == "accuracy_level"
    }
    assert levels == {4}
    assert abs(rec["metrics"]["kl_to_fp32"] - s["metrics"]["kl_to_fp32"]) < 0.02 * s["metrics"]["kl_to_fp32"] + 1e-6
    assert rec["metrics"]["top1_agreement"] >= s["metrics"]["top1_agreement"] - 0.01
    n = len(s["decode"]["greedy_tokens"])
    assert rec["decode"]["greedy_tokens"][:n] == s["decode"]["greedy_tokens"]


def test_int8_compute_without_blocks_is_refused_in_one_line(tiny_task) -> None:
    qm = quantize(tiny_task.model, get_recipe("w8a16", int8_compute=True))  # per channel: no MatMulNBits block
    with pytest.raises(Unsupported, match="int8 compute needs MatMulNBits blocks"):
        lower_torch(qm)
