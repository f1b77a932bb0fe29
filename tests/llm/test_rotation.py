"""Rotation before per-token W8A8 (QuaRot-style): the float model is unchanged, the planted outliers
are spread so the quantized model is closer to FP32, ONNX Runtime runs the rotated graph as the
simulation does, and a decoder it does not fit is refused with the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from quantwise.api import build_quantized, lower
from quantwise.errors import Unsupported
from quantwise.recipes import get_recipe
from quantwise.runtime.torch_sim import lower_torch
from quantwise.tasks import load_task
from quantwise.transform.rotation import RotatedInput, RotatedOutput, hadamard, random_orthogonal

PER_TOKEN = {"activations": "per-token"}


@pytest.fixture(scope="module")
def outlier_task(tiny_llama: Path, lm_text: Path):
    """The tiny Llama with planted outliers that leave its outputs as they were (as trained LLMs
    have them: large activations, small weights reading them): four channels of every norm's
    output 40x larger, the Linears reading them 40x smaller there; two channels of every
    down_proj input 30x larger (their up_proj rows), down_proj 30x smaller there."""
    task = load_task(model=str(tiny_llama), data=str(lm_text))
    big, hot = [3, 17, 30, 51], [5, 77]
    with torch.no_grad():
        for layer in task.model.lm.model.layers:
            a, mlp = layer.self_attn, layer.mlp
            for norm, readers in (
                (layer.input_layernorm, (a.q_proj, a.k_proj, a.v_proj)),
                (layer.post_attention_layernorm, (mlp.gate_proj, mlp.up_proj)),
            ):
                norm.weight[big] *= 40.0
                for lin in readers:
                    lin.weight[:, big] /= 40.0
            mlp.up_proj.weight[hot] *= 30.0
            mlp.down_proj.weight[:, hot] /= 30.0
    return task


def _logits(model: nn.Module, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(*batch)


def test_the_rotations_are_orthogonal() -> None:
    for r in (random_orthogonal(24, 0), hadamard(64, 0)):
        assert torch.allclose(r @ r.T, torch.eye(r.shape[0], dtype=torch.float64), atol=1e-12)


def test_rotation_keeps_the_float_model_and_brings_per_token_w8a8_closer(outlier_task) -> None:
    plain = build_quantized(outlier_task, get_recipe("dynamic-int8", **PER_TOKEN))
    rot = build_quantized(outlier_task, get_recipe("dynamic-int8", rotate=True, **PER_TOKEN))
    info = rot.info["rotation"]
    assert info["values"] == "Hadamard per head" and info["down_proj_block"] == 128 and not info["not_rotated"]
    assert info["float_output_change"] < 1e-5
    body = rot.model.lm.model
    assert isinstance(body.norm, RotatedOutput)  # its scale, in turned coordinates
    assert all(isinstance(layer.mlp.down_proj, RotatedInput) for layer in body.layers)
    assert not isinstance(outlier_task.model.lm.model.norm, RotatedOutput)  # the task's model is untouched
    # every layer is still quantized (down_proj and the embedding inside their rotations)
    assert set(rot.layers) == {n.replace("mlp.down_proj", "mlp.down_proj.module") for n in plain.layers}
    assert rot.info["tied_weights"] == {"lm.model.embed_tokens": "lm.lm_head"}  # one turned table
    batch = outlier_task.eval_batches[0]
    ref = _logits(outlier_task.model, batch)
    e_plain = (_logits(lower_torch(plain), batch) - ref).pow(2).mean()  # the simulation: activations quantized too
    e_rot = (_logits(lower_torch(rot), batch) - ref).pow(2).mean()
    assert e_rot < 0.5 * e_plain, (float(e_rot), float(e_plain))


@pytest.mark.parametrize(
    "recipe, kernel, count",
    [
        (get_recipe("dynamic-int8", rotate=True, **PER_TOKEN), "MatMulInteger", 7 * 2 + 1),
        (get_recipe("w4a16", group_size=32, method="gptq", rotate=True), "MatMulNBits", 7 * 2 + 1),
    ],
    ids=["w8a8-per-token", "w4a16-gptq"],
)
def test_a_rotated_decoder_runs_in_onnxruntime_as_simulated(
    outlier_task, recipe, kernel, count, tmp_path: Path
) -> None:
    """The rotations are float MatMuls in the step graph (fused attention kept), every Linear in its
    integer kernel; scores match the simulation (per-token rows may move by a step: cosine per
    position), and so do greedy tokens. llama.cpp refuses the rotated model with the reason."""
    import onnx

    from quantwise.runtime.llamacpp import SPEC

    qm = build_quantized(outlier_task, recipe)
    assert "rotations" in (SPEC.why_not(qm) or "")
    runner, module = lower(qm, outlier_task, "onnxruntime", tmp_path, 1)
    ops = [n.op_type for n in onnx.load(str(runner.artifact), load_external_data=False).graph.node]
    assert runner.attention.startswith("GroupQueryAttention")
    assert ops.count(kernel) == count  # seven Linears per block and the head
    batch = outlier_task.eval_batches[0]
    want = _logits(module, batch).numpy()[0]
    got = runner.run(batch)[0]
    cos = (got * want).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(want, axis=-1))
    assert cos.min() > 0.999, cos.min()
    prompt = outlier_task.generation.prompt[:, :16]
    with torch.inference_mode():
        ids = prompt
        for _ in range(4):
            ids = torch.cat([ids, module(ids)[:, -1:].argmax(-1)], dim=1)
    assert runner.generate(prompt, 4) == ids[0, 16:].tolist()
    runner.close()


def test_rotation_of_a_model_without_the_llama_layout_is_refused(tiny_gpt2: Path, lm_text: Path) -> None:
    task = load_task(model=str(tiny_gpt2), data=str(lm_text))
    with pytest.raises(Unsupported, match="Llama layout|Llama-style") as e:
        build_quantized(task, get_recipe("dynamic-int8", rotate=True, **PER_TOKEN))
    assert "\n" not in str(e.value) and "without it" in str(e.value)


def test_a_norm_that_does_not_commute_with_the_rotation_is_refused(tiny_llama: Path, lm_text: Path) -> None:
    """A norm named RMSNorm that is not ``x / rms(x) * weight`` (here it adds a bias after the
    scale): the float model would change, so the rotation is refused, never applied."""
    task = load_task(model=str(tiny_llama), data=str(lm_text))
    norm = task.model.lm.model.layers[0].post_attention_layernorm

    class ShiftedRMSNorm(type(norm)):  # type: ignore[misc]
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) + 0.5

    norm.__class__ = ShiftedRMSNorm
    with pytest.raises(Unsupported, match="changed the float model's outputs"):
        build_quantized(task, get_recipe("dynamic-int8", rotate=True, **PER_TOKEN))
