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


def test_the_module_route_keeps_the_same_padding_stem_float_and_the_exported_one_quantizes_it(tmp_path: Path):
    model, batches = build("tf-same-padding")
    assert "stem" in quantize(model, "static-int8", batches[:1]).skipped
    ep = torch.export.export(model, (batches[0][0],))
    assert "stem" in quantize(ep, "static-int8", batches[:1]).layers  # F.pad stays a call before the lifted conv


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
