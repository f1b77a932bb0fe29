"""Model-zoo conformance: on real architectures (random weights), every heavy layer is found and
either quantized or listed with its reason, rewrites keep the FP32 output, the simulation stays
above a stated SQNR floor, and static INT8 in ONNX Runtime runs every quantized layer in an
integer kernel. Models: ``models.py``; floors and their reasons: ``floors.py``."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from quantwise import quantize
from quantwise.api import lower
from quantwise.recipes import get_recipe
from quantwise.runtime.torch_sim import lower_torch
from quantwise.tasks.base import Task
from quantwise.transform.fusion import fold_batchnorm

from .floors import FLOORS
from .models import build

MODELS = list(FLOORS)
RECIPES = ["static-int8", "dynamic-int8", "weight-int8"]
_CACHE: dict[str, tuple[nn.Module, list]] = {}


def _model(name: str) -> tuple[nn.Module, list]:
    if name not in _CACHE:
        _CACHE[name] = build(name)
    return _CACHE[name]


def _sqnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean().clamp(min=1e-30)))


def _heavy(model: nn.Module) -> list[str]:
    """Leaf modules holding a weight matrix: what a census must account for."""
    return [
        n
        for n, m in model.named_modules()
        if n
        and not any(True for _ in m.children())
        and isinstance(getattr(m, "weight", None), torch.Tensor)
        and m.weight.dim() >= 2
    ]


@pytest.mark.parametrize("name", MODELS)
def test_rewrites_keep_the_fp32_output(name):
    model, batches = _model(name)
    folded = copy.deepcopy(model)
    fold_batchnorm(folded)
    with torch.no_grad():
        ref, out = model(*batches[1]), folded(*batches[1])
    assert out.shape == ref.shape
    assert float((out - ref).abs().max()) <= 1e-5 * float(ref.abs().max()) + 1e-6


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("name", MODELS)
def test_every_heavy_layer_is_quantized_or_listed_and_sqnr_holds(name, recipe):
    model, batches = _model(name)
    # the floors are for 8-bit weights on every CPU (reduce_range auto would use 7 bits where VNNI is missing)
    over = {"reduce_range": "off"} if recipe != "weight-int8" else {}
    qm = quantize(model, get_recipe(recipe, **over), batches[:1])
    heavy = set(_heavy(qm.model))
    accounted = set(qm.layers) | set(qm.skipped) | set(qm.info.get("tied_weights", {}))  # a tied table: its head's
    assert heavy <= accounted, f"heavy layers neither quantized nor listed: {sorted(heavy - accounted)}"
    assert all(isinstance(r, str) and r for r in qm.skipped.values())
    with torch.no_grad():
        ref, out = model(*batches[1]), lower_torch(qm)(*batches[1])
    assert out.shape == ref.shape
    floor = FLOORS[name][recipe]
    assert _sqnr(ref, out) >= floor, f"{name} {recipe}: SQNR {_sqnr(ref, out):.1f} dB < {floor}"


def test_bn_in_forward_is_folded_and_depthwise_convs_are_quantized():
    qm = quantize(*_model("resnet-style")[:1], "static-int8", _model("resnet-style")[1][:1])
    assert qm.info["pairing"] == "fx"
    assert qm.folded["layer1.0.conv1"] == "layer1.0.bn1" and len(qm.folded) == 5
    shared = [lq for lq in qm.layers.values() if lq.fused_relu == "layer1.0.relu"]
    assert shared and all(lq.activation_shared for lq in shared)  # fused into the layer's output, and kept
    sim = lower_torch(qm)
    assert isinstance(sim.get_submodule("layer1.0.relu"), nn.ReLU)  # its other call site still needs it
    assert qm.info["quantized_between_layers"]["adds"] >= 1 and qm.activations
    mb = quantize(*_model("mobilenetv2-style")[:1], "static-int8", _model("mobilenetv2-style")[1][:1])
    dw = [n for n, m in mb.model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert dw and all(n in mb.layers for n in dw)


def test_a_conv_subclass_with_its_own_forward_is_not_replaced():
    """Without an example to capture the model on (no calibration data), the subclass stays float
    with its reason; with one, tests/test_exported.py shows it captured and quantized."""
    model, batches = _model("tf-same-padding")
    qm = quantize(model, "weight-int8")
    assert "stem" not in qm.layers and "own forward" in qm.skipped["stem"] and "captured" not in qm.info
    with torch.no_grad():
        assert lower_torch(qm)(*batches[1]).shape == model(*batches[1]).shape


def test_transformers_conv1d_is_quantized_as_linear():
    model, batches = _model("gpt2-lm")
    qm = quantize(model, "dynamic-int8", batches[:1])
    assert any(n.endswith("attn.c_attn") for n in qm.layers) and qm.info["rewritten_as_linear"]


def _task(model: nn.Module, batches: list) -> Task:
    x = batches[1][0]
    return Task(
        name="zoo",
        model=model,
        calibration=batches[:1],
        eval_batches=batches[1:],
        score=lambda o: {},
        input_names=["input"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        latency_input=lambda n: (x[:n],),
        build_model=lambda: model,
    )


@pytest.mark.parametrize(
    "name",
    [
        "resnet-style",
        "mobilenetv2-style",
        "mobilenetv3-style",
        "efficientnet-style",
        "convnext-style",
        "shufflenetv2-style",
        "bert-classifier",
        "vit-classifier",
    ],
)
def test_static_int8_runs_every_quantized_layer_in_integer_kernels(name, tmp_path: Path):
    model, batches = _model(name)
    qm = quantize(model, "static-int8", batches[:1])
    runner, _ = lower(qm, _task(model, batches), "onnxruntime", tmp_path)
    out = runner.run(batches[1])
    with torch.no_grad():
        sim = lower_torch(qm)(*batches[1]).numpy()
    ops = runner.integer_ops()
    heavy_quantized = sum(lq.kind != "embedding" for lq in qm.layers.values())
    assert ops["integer"] >= heavy_quantized, ops
    assert np.mean(out.reshape(len(out), -1).argmax(1) == sim.reshape(len(sim), -1).argmax(1)) >= 0.9


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch-int8", "tflite"])
def test_relu6_is_fused_and_each_runtime_clips_as_the_simulation(runtime, tmp_path: Path):
    """MobileNetV2's ReLU6 after a conv (and a folded BatchNorm) is fused like a ReLU: the conv's
    output is quantized over the clipped range [0, 6], not the conv's own."""
    model, batches = _model("mobilenetv2-style")
    qm = quantize(model, "static-int8", batches[:1])
    acts = {n: lq.activation for n, lq in qm.layers.items() if lq.activation}
    assert acts == {n: "relu6" for n in ("features.0", *(f"features.{b}.conv.{i}" for b in (3, 4) for i in (0, 3)))}
    for n in acts:
        out = qm.layers[n].output
        assert out is not None and out.zero_point == 0 and (255 - out.zero_point) * out.scale <= 6.0 + 1e-6
    runner, _ = lower(qm, _task(model, batches), runtime, tmp_path)
    got = runner.run(batches[1])
    with torch.no_grad():
        sim = lower_torch(qm)(*batches[1]).numpy()
        ref = model(*batches[1]).numpy()
    # within a few output steps of the simulation, and as close to FP32 as the simulation is
    assert _sqnr(torch.from_numpy(sim), torch.from_numpy(got)) > 30.0
    assert _sqnr(torch.from_numpy(ref), torch.from_numpy(got)) > _sqnr(torch.from_numpy(ref), torch.from_numpy(sim)) - 3
    if runtime == "onnxruntime":
        ops = runner.integer_ops()
        assert ops["integer"] >= sum(lq.kind != "embedding" for lq in qm.layers.values()), ops


def test_a_lowered_layer_that_changes_its_output_shape_stops_quantize(monkeypatch):
    """The shape guard: a quantized layer computing another shape than its float layer (as a
    dropped padding did) is a one-line error naming it, never a different model."""
    from quantwise.errors import Unsupported
    from quantwise.runtime import qmodules

    model, batches = _model("resnet-style")
    real = qmodules.QConv2d.__init__

    def drop_padding(self, lq, layer):
        real(self, lq, layer)
        self.padding = (0, 0)

    monkeypatch.setattr(qmodules.QConv2d, "__init__", drop_padding)
    with pytest.raises(
        Unsupported,
        match=r"conv1: the quantized layer gives shape \(16, 16, 15, 15\) where the float layer gives \(16, 16, 16, 16\)",
    ):
        quantize(model, "static-int8", batches[:1])


def test_a_forward_hook_a_swap_would_drop_stops_quantize():
    """The fidelity guard: with every quantizer disabled the simulation must reproduce FP32. A
    user's forward hook on a conv (here doubling its output) would vanish with the swapped module,
    changing the model without changing any shape: one line names the layer."""
    from quantwise.errors import Unsupported

    model, batches = _model("resnet-style")
    model = copy.deepcopy(model)  # the cached model is shared by this worker's other tests
    model.layer1[0].conv2.register_forward_hook(lambda _m, _a, out: out * 2)
    with pytest.raises(Unsupported, match=r"layer1\.0\.conv2: with every quantizer disabled the lowered layer differs"):
        quantize(model, "static-int8", batches[:1])


def test_a_fused_activation_dropped_in_lowering_is_caught(monkeypatch):
    """A fused ReLU6 the lowering forgot to apply (its module is gone, replaced by Identity): the
    guard names the first layer whose output, activation included, differs from the float model's."""
    from quantwise.errors import Unsupported
    from quantwise.runtime import qmodules

    model, batches = _model("mobilenetv2-style")
    real = qmodules.QConv2d.__init__

    def no_clip(self, lq, layer):
        real(self, lq, layer)
        self.act = None

    monkeypatch.setattr(qmodules.QConv2d, "__init__", no_clip)
    with pytest.raises(
        Unsupported, match=r"with every quantizer disabled the lowered layer differs from the float layer"
    ):
        quantize(model, "static-int8", batches[:1])


class _Branchy(nn.Module):
    """A data-dependent Python branch: tracing for export keeps the side its example input took."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return y * 2 if bool(x.mean() > 0) else y


def test_a_runtime_whose_fp32_export_is_another_model_is_refused():
    """The fidelity guard per runtime: ONNX Runtime's FP32 model must give PyTorch's output on the
    first evaluation batch (1e-5 of the range); an export that baked in one side of a branch does not."""
    from quantwise.api import evaluate
    from quantwise.errors import Unsupported

    torch.manual_seed(0)
    model = _Branchy().eval()
    batches = [(torch.randn(16, 8) + 1.0,), (torch.randn(16, 8) - 1.0,)]  # the export sees the other branch
    task = _task(model, [batches[0], batches[1], batches[1]])
    task.latency_input = lambda n: (batches[0][0][:n],)
    kw = {"batch_sizes": (), "measure_memory": False}
    with pytest.raises(Unsupported, match="onnxruntime's FP32 model differs from PyTorch's by 1 of the output range"):
        evaluate(task, None, "onnxruntime", **kw)  # compare: n/a with this reason
    task.latency_input = lambda n: (batches[1][0][:n],)
    assert evaluate(task, None, "onnxruntime", **kw)["info"]["fp32_max_rel_diff"] < 1e-5


@pytest.mark.parametrize("recipe", ["static-int8", "dynamic-int8"])
@pytest.mark.parametrize("name", MODELS)
def test_pytorch_int8_kernels_run_every_quantized_layer_as_the_simulation(name, recipe, tmp_path: Path):
    """torch-int8 (oneDNN's int8 kernels) on every zoo model: each quantized Conv2d/Linear runs in an
    int8 kernel (depthwise and grouped convs, transformers' Conv1D, a ViT whose embedding reads its
    projection's ``.weight``); dynamic INT8 chooses its run-time scales by the simulation's own rule,
    so only float32 rescaling can differ; static INT8 requantizes in the kernel, a step at most."""
    model, batches = _model(name)
    qm = quantize(model, recipe, batches[:1])
    runner, module = lower(qm, _task(model, batches), "torch-int8", tmp_path)
    got = runner.run(batches[1])
    with torch.no_grad():
        want = lower_torch(qm)(*batches[1]).numpy()
    gap = float(np.abs(got - want).max() / np.abs(want).max())
    assert gap <= (1e-5 if recipe == "dynamic-int8" else 0.02), f"{name} {recipe}: {gap:.2e} of the range"
    assert np.mean(got.reshape(len(got), -1).argmax(1) == want.reshape(len(want), -1).argmax(1)) >= 0.95
    assert runner.integer_ops()["integer"] == sum(lq.kind != "embedding" for lq in qm.layers.values())
