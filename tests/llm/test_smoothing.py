"""AWQ and SmoothQuant: scales found by dataflow, folded without changing the float model, chosen
by measured output error, recorded; a fold that would change the model is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from quantwise.api import build_quantized, quantize
from quantwise.errors import Unsupported
from quantwise.recipes import get_recipe
from quantwise.tasks import load_task
from quantwise.transform.smoothing import find_groups


@pytest.fixture(scope="module")
def outlier_task(tiny_llama: Path, lm_text: Path):
    """The tiny Llama with planted activation outliers: four channels of every norm's output 40x larger."""
    task = load_task(model=str(tiny_llama), data=str(lm_text))
    with torch.no_grad():
        for name, mod in task.model.named_modules():
            if name.endswith("layernorm"):
                mod.weight[[3, 17, 30, 51]] *= 40.0
    return task


def _logits(model: nn.Module, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(*batch)


def test_smoothquant_finds_norm_groups_and_recovers_w8a8_error(outlier_task) -> None:
    plain = build_quantized(outlier_task, get_recipe("dynamic-int8", activations="per-token"))
    smooth = build_quantized(outlier_task, get_recipe("dynamic-int8", activations="per-token", smoothquant=True))
    info = smooth.info["smoothquant"]
    # q/k/v after input_layernorm and gate/up after post_attention_layernorm, in both blocks (not down_proj
    # through up_proj, as AWQ does: measured worse for W8A8)
    assert info["groups"] == 4 and info["scaled_layers"] == 10
    assert all("not the output of a norm" in why for why in info["unscaled_layers"].values())
    assert sorted(info["unscaled_layers"]) == [
        f"lm.model.layers.{i}.{p}" for i in (0, 1) for p in ("mlp.down_proj", "self_attn.o_proj")
    ]
    assert "lm.lm_head" in info["tied_not_scaled"]  # scaling it would scale the tied embedding
    errs = info["relative_output_error"]
    assert info["searched"] and len(info["alphas"]) == 4 and any(a is not None for a in info["alphas"].values())
    assert errs["chosen"] < 0.5 * errs["none"]  # each group's strength, chosen on its calibration rows
    batch = outlier_task.eval_batches[0]
    ref = _logits(outlier_task.model, batch)
    e_plain = (_logits(plain.model, batch) - ref).pow(2).mean()
    e_smooth = (_logits(smooth.model, batch) - ref).pow(2).mean()
    assert e_smooth < e_plain  # the whole model, not only the searched layers, is closer to FP32


def test_awq_scales_salient_channels_and_keeps_the_float_model(outlier_task) -> None:
    qm = build_quantized(outlier_task, get_recipe("w4a16", group_size=32, method="awq"))
    info = qm.info["awq"]  # down_proj scaled through up_proj too
    assert info["groups"] == 6 and max(info["exponents"].values()) > 0
    norm = qm.model.get_submodule("lm.model.layers.0.input_layernorm").weight
    orig = outlier_task.model.get_submodule("lm.model.layers.0.input_layernorm").weight
    assert not torch.equal(norm, orig)  # the scales live in the QuantizedModel's own norm weights
    rtn = build_quantized(outlier_task, get_recipe("w4a16", group_size=32))
    batch = outlier_task.eval_batches[0]
    ref = _logits(outlier_task.model, batch)
    assert (_logits(qm.model, batch) - ref).pow(2).mean() < (_logits(rtn.model, batch) - ref).pow(2).mean()


class OnePlusNorm(nn.Module):
    """A norm computing ``x * (1 + weight)`` (Gemma's): dividing its weight does not divide its output."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (1 + self.weight)


def test_a_fold_that_would_change_the_model_is_refused() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), OnePlusNorm(32), nn.Linear(32, 4)).eval()
    calib = [(torch.randn(16, 8) * 3,) for _ in range(4)]
    with pytest.raises(Unsupported, match="changed the float model's outputs"):
        quantize(model, get_recipe("w4a16", group_size=32, method="awq"), calib)


def test_awq_with_nowhere_to_fold_is_refused_not_skipped() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4)).eval()  # inputs come from a ReLU
    calib = [(torch.randn(16, 8),) for _ in range(2)]
    with pytest.raises(Unsupported, match="nowhere to fold"):
        quantize(model, get_recipe("w4a16", group_size=32, method="awq"), calib)


class GatedMLP(nn.Module):
    """``down(act(gate(x)) * up(x))``; ``leak`` also adds ``up(x)`` to the output, so scaling up's rows moves it."""

    def __init__(self, act: str = "silu", leak: bool = False) -> None:
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 8)
        self.act, self.leak = act, leak

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act == "relu":  # positively homogeneous: relu(y / s) = relu(y) / s, so the fold is exact
            return self.down(torch.relu(self.up(x)))
        if self.act == "tanh":  # not: tanh(y / s) != tanh(y) / s
            return self.down(torch.tanh(self.up(x)))
        h = F.silu(self.gate(x)) * self.up(x)
        return self.down(h) + (self.up(x)[..., :8] if self.leak else 0)


@pytest.mark.parametrize(
    ("act", "leak", "prev"),
    [("silu", False, "0.up"), ("relu", False, "0.up"), ("tanh", False, None), ("silu", True, None)],
)
def test_a_linear_is_smoothed_through_a_sibling_only_when_its_input_scales_with_it(act, leak, prev) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(GatedMLP(act, leak)).eval()
    calib = [(torch.randn(4, 8),)]
    before = [p.detach().clone() for p in model.parameters()]
    groups, why = find_groups(model, {"0.down": model[0].down}, calib)
    assert [(g.prev, g.linears) for g in groups] == ([(prev, ["0.down"])] if prev else [])
    assert (why == {}) == (prev is not None)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # the trial fold is undone


@pytest.mark.parametrize(("fixture", "through"), [("mha_llama", "v_proj"), ("tiny_gpt2", None)])
def test_awq_scales_o_proj_through_v_proj_only_under_multi_head_attention(fixture, through, lm_text, request) -> None:
    task = load_task(model=str(request.getfixturevalue(fixture)), data=str(lm_text))
    info = build_quantized(task, get_recipe("w4a16", group_size=32, method="awq")).info["awq"]
    if through:  # q/k/v, o through v, gate/up, down through up: every Linear but the tied head
        assert info["groups"] == 8 and info["unscaled_layers"] == {}
    else:  # GPT-2: c_proj follows GELU (not homogeneous) and attention over a fused QKV: left unscaled, with why
        assert sorted(info["unscaled_layers"]) == [
            f"lm.transformer.h.{i}.{p}.c_proj" for i in (0, 1) for p in ("attn", "mlp")
        ]
        assert all("nor scales with one" in why for why in info["unscaled_layers"].values())
