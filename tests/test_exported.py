"""``torch.export`` programs in: their Conv/Linear/BatchNorm/ReLU calls are lifted into modules
(the same Parameters, the program's own names), checked against the program, then quantized by
dataflow like any module: a "same"-padding stem the module route keeps in float is quantized here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_cli import _digit_folder, _user_error, run_cli
from zoo.floors import FLOORS
from zoo.models import build

from quantwise import quantize
from quantwise.errors import UserError
from quantwise.runtime.torch_sim import lower_torch
from quantwise.transform.lift import lift_program, load_exported


def _sqnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean().clamp(min=1e-30)))


def _export(model: torch.nn.Module, x: torch.Tensor, path: Path) -> Path:
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
    torch.export.save(ep, str(path))
    return path


@pytest.mark.parametrize("name", ["resnet-style", "mobilenetv2-style", "tf-same-padding"])
def test_an_exported_cnn_is_lifted_folded_fused_and_quantized(name: str, tmp_path: Path) -> None:
    model, batches = build(name)
    path = _export(model, batches[0][0], tmp_path / "m.pt2")
    lifted, info = load_exported(str(path))
    assert info["left"] == {} and info["checked_on"] == "the program's example inputs"
    convs = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert {n for n, op in info["lifted"].items() if op in ("conv2d", "linear")} == set(convs)  # the model's names
    qm = quantize(lifted, "static-int8", batches[:1])
    assert qm.info["pairing"] == "fx" and set(qm.layers) == set(convs) and not qm.skipped  # the stem included
    bns = [n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert sorted(qm.folded.values()) == sorted(bns)
    with torch.no_grad():
        ref, out = model(*batches[1]), lower_torch(qm)(*batches[1])
    assert _sqnr(ref, out) >= FLOORS[name]["static-int8"]


def test_the_module_route_captures_a_same_padding_stem_and_quantizes_it(tmp_path: Path):
    """A Conv2d subclass with its own forward: the module is captured with torch.export and lifted,
    so its F.pad stays a node before a plain conv, and the stem is quantized (the fidelity guard
    and the SQNR floor say nothing else changed); a saved result loads onto a capture only."""
    from quantwise.quantized import QuantizedModel

    model, batches = build("tf-same-padding")
    qm = quantize(model, "static-int8", batches[:1])
    assert "stem" in qm.layers and not qm.skipped
    assert qm.info["captured"]["by"] == "torch.export" and "Conv2dSame" in qm.info["captured"]["why"]
    with torch.no_grad():
        ref, out = model(*batches[1]), lower_torch(qm)(*batches[1])
    assert out.shape == ref.shape and _sqnr(ref, out) >= FLOORS["tf-same-padding"]["static-int8"]
    ep = torch.export.export(model, (batches[0][0],))
    assert "stem" in quantize(ep, "static-int8", batches[:1]).layers  # a program in: the same lifting
    from quantwise.recipes import get_recipe
    from quantwise.transform.quantize import quantize_model

    below = quantize_model(model, get_recipe("static-int8"), batches[:1])  # as the mixed search's candidates call it
    assert "stem" in below.layers and below.info["captured"]["by"] == "torch.export"
    saved = qm.save(tmp_path / "q")
    with pytest.raises(UserError, match="captured with torch.export"):
        QuantizedModel.load(saved, build("tf-same-padding")[0])
    from quantwise.transform.capture import capture

    again = QuantizedModel.load(saved, capture(build("tf-same-padding")[0], batches[0])[0])
    with torch.no_grad():
        assert torch.equal(lower_torch(again)(*batches[1]), out)


def test_a_model_torch_export_cannot_capture_keeps_the_subclass_float_and_says_why():
    class Branchy(torch.nn.Module):  # data-dependent control flow: torch.export refuses it
        def __init__(self) -> None:
            super().__init__()
            self.inner = build("tf-same-padding")[0]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x) if x.sum() > 0 else -self.inner(x)

    _, batches = build("tf-same-padding")
    qm = quantize(Branchy().eval(), "static-int8", batches[:1])
    assert "inner.stem" in qm.skipped and "own forward" in qm.skipped["inner.stem"]
    assert "torch.export could not capture" in qm.info["capture_failed"]["failed"]


def test_a_lift_that_changes_the_output_is_refused(tmp_path: Path, monkeypatch) -> None:
    model, batches = build("resnet-style")
    ep = torch.export.export(model, (batches[0][0],))
    import quantwise.transform.lift as lift

    real = lift._module_for

    def off_by_one_padding(gm, node):
        found = real(gm, node)
        if found is not None and isinstance(found[0], torch.nn.Conv2d) and found[0].padding == (1, 1):
            found[0].padding = (0, 0)
        return found

    monkeypatch.setattr(lift, "_module_for", off_by_one_padding)
    with pytest.raises(UserError, match="lifting the exported program changed"):
        lift_program(ep)


def test_a_pt2_file_on_the_command_line(tmp_path: Path, capsys) -> None:
    from quantwise.tasks.mnist import _build_model

    model = _build_model()
    _export(model, torch.zeros(2, 1, 28, 28), tmp_path / "mnist.pt2")
    _digit_folder(tmp_path / "digits")
    args = ["quantize", "--model", str(tmp_path / "mnist.pt2"), "--data", str(tmp_path / "digits")]
    args += ["--mean", "0.1307", "--std", "0.3081", "--recipe", "static-int8", "--no-memory"]
    assert "--trust-pickle" in _user_error(capsys, args)  # torch.export.load unpickles
    p = run_cli([*args, "--runtime", "onnxruntime", "--format", "json", "--trust-pickle"])
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert rec["metrics"]["accuracy"] == 1.0 and rec["integer_ops"]["integer"] == 4  # as the .pt route
    heavy = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert sorted(rec["quantized_layers"]) == sorted(heavy) and not rec["float_layers"]  # the module's own names
