"""The built-in smollm2 task on the real model: its FP32 baseline, W8A16's target, and ONNX
Runtime (the KV-cache step graph, scoring with an empty cache and generating) against the torch simulation."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import pytest

from quantwise.api import lower, quantize, run_outputs
from quantwise.measure.decode import measure_decode
from quantwise.recipes import get_recipe
from quantwise.tasks import load_task

pytestmark = pytest.mark.xdist_group(name="smollm2")  # one worker loads the model once (make test: --dist loadgroup)


@pytest.fixture(scope="session")  # kept on its xdist worker across interleaved modules
def smollm2():
    task = load_task("smollm2", limit=1)
    return dataclasses.replace(task, eval_batches=task.eval_batches[:21])  # 1 window + 20 zero-shot articles


@pytest.fixture(scope="session")  # kept on its xdist worker across interleaved modules
def fp32(smollm2):
    return metrics(smollm2, None, "torch")


def metrics(task, qm, runtime):
    with tempfile.TemporaryDirectory() as d:
        runner, _ = lower(qm, task, runtime, Path(d), 1)
        m = task.score(run_outputs(runner, task.eval_batches, "test", task))
        tokens = measure_decode(runner, dataclasses.replace(task.generation, new_tokens=8), repeats=1)["greedy_tokens"]
        if hasattr(runner, "close"):
            runner.close()
    return m, tokens[:8]


def test_fp32_baseline_is_the_dequantized_gguf_and_clearly_above_chance(smollm2, fp32) -> None:
    assert smollm2.info["protocol"] == {
        **smollm2.info["protocol"],
        "window": 512,
        "stride": 512,
        "eval_windows": 1,
        "tokens_scored": 511,
    }
    m, _ = fp32
    assert m["kl_to_fp32"] < 1e-4 and m["top1_agreement"] == 1.0
    assert 10 < m["perplexity"] < 60  # a 135M model on news text
    assert m["zero_shot_examples"] == 20 and m["zero_shot_accuracy"] >= 0.4  # chance is 0.2


def test_w8a16_is_within_half_a_percent_of_fp32_perplexity(smollm2, fp32) -> None:
    base, _ = fp32
    qm = quantize(smollm2.model, get_recipe("w8a16", group_size=128), smollm2.calibration)
    m, _ = metrics(dataclasses.replace(smollm2, eval_batches=smollm2.eval_batches[:1]), qm, "torch")  # the window
    assert m["perplexity"] / base["perplexity"] - 1 < 0.005
    assert qm.info["tied_weights"] == {"lm.model.embed_tokens": "lm.lm_head"}


def test_onnxruntime_with_kv_cache_computes_what_the_simulation_says(smollm2) -> None:
    smollm2 = dataclasses.replace(smollm2, eval_batches=smollm2.eval_batches[:1])  # the perplexity window only
    qm = quantize(smollm2.model, get_recipe("w4a16", group_size=128), smollm2.calibration)
    sim, sim_tokens = metrics(smollm2, qm, "torch")
    ort, ort_tokens = metrics(smollm2, qm, "onnxruntime")
    assert abs(ort["perplexity"] / sim["perplexity"] - 1) < 1e-4
    assert abs(ort["kl_to_fp32"] - sim["kl_to_fp32"]) < 1e-3
    assert ort_tokens == sim_tokens  # greedy generation through the step graph's cache


def test_a_fragile_format_is_told_apart_from_a_runtime_computing_another_model(smollm2) -> None:
    """Dynamic per-tensor W8A8 on SmolLM2 (activation outliers make its steps coarse). PyTorch's
    oneDNN int8 kernels reproduce the simulation bit for bit. Moving each int8 layer's input by one
    float32 ulp (what a float kernel summing in another order does; ONNX Runtime agrees on about two
    thirds of the top-1 picks) costs about a third of the picks: the simulation under 1e-6 noise
    does the same, so that is a fragile format, not a runtime computing another model. A runner
    whose vocabulary is shifted by one still differs."""
    import numpy as np
    import torch

    from quantwise.runtime.parity import MIN_AGREEMENT, runtime_vs_simulation, sampling_slack
    from quantwise.runtime.torch_int8 import Int8Linear

    qm = quantize(smollm2.model, get_recipe("dynamic-int8"), smollm2.calibration)
    with tempfile.TemporaryDirectory() as d:
        runner, module = lower(qm, smollm2, "torch-int8", Path(d), 1)
        exact = runtime_vs_simulation(qm, smollm2, runner, "torch-int8")
        assert exact == {**exact, "status": "ok", "top1_agreement": 1.0, "max_rel_diff": 0.0}

        nudge = [
            m.register_forward_pre_hook(lambda _m, a: (torch.nextafter(a[0], torch.full_like(a[0], np.inf)),))
            for m in module.modules()
            if isinstance(m, Int8Linear)
        ]
        par = runtime_vs_simulation(qm, smollm2, runner, "torch-int8")
        for h in nudge:
            h.remove()
        assert par is not None and par["top1_agreement"] < MIN_AGREEMENT, par  # the plain check would say differs
        assert par["noise_floor_agreement"] < MIN_AGREEMENT
        floor = par["noise_floor_agreement"]
        assert par["status"] == "ok" and par["top1_agreement"] >= floor - sampling_slack(floor, 128)
        assert "rounding boundaries" in par["reason"]

        class Shifted:  # the same kernels, every logit moved to the next token id
            def run(self, batch):
                return np.roll(runner.run(batch), 1, axis=-1)

        other = runtime_vs_simulation(qm, smollm2, Shifted(), "torch-int8")
    assert other is not None and other["status"] == "differs" and other["top1_agreement"] < 0.05
