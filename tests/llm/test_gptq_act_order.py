"""compare's GPTQ formats for causal LMs quantize in activation order (static groups), and ONNX
Runtime runs what the simulation computes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from quantwise.api import build_quantized, evaluate
from quantwise.sweep.formats import LLM_FORMATS
from quantwise.tasks import load_task


@pytest.mark.parametrize("fid", ["w4a16-g128-gptq", "w4a8-g128-gptq"])
def test_gptq_in_activation_order_runs_in_onnx_runtime_as_simulated(tiny_llama: Path, lm_text: Path, fid: str) -> None:
    task = load_task(model=str(tiny_llama), data=str(lm_text))
    recipe = LLM_FORMATS[fid].build_recipe()
    assert recipe is not None and recipe.gptq_act_order and recipe.method == "gptq"
    qm = build_quantized(task, recipe)
    in_order = build_quantized(task, dataclasses.replace(recipe, gptq_act_order=False))
    name = "lm.model.layers.0.mlp.down_proj"
    assert not (qm.layers[name].weight_q == in_order.layers[name].weight_q).all()  # a different sweep order
    kw = {"measure_memory": False, "latency_seconds": 0.2, "batch_sizes": (1,)}
    rec = evaluate(task, recipe, "onnxruntime", quantized=qm, **kw)
    sim = evaluate(task, recipe, "torch", quantized=qm, **kw)
    kernels = rec["integer_ops"]["kernels"]
    assert kernels.get("MatMulNBits", 0) + kernels.get("MatMulNBits (int8 compute)", 0) == 2 * 7 + 1  # and the head
    assert rec["metrics"]["perplexity"] == pytest.approx(sim["metrics"]["perplexity"], rel=1e-4)
    n = len(sim["decode"]["greedy_tokens"])
    assert rec["decode"]["greedy_tokens"][:n] == sim["decode"]["greedy_tokens"]
