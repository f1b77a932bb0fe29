"""A TensorFlow model in: a Keras CNN (Conv/BN/ReLU, depthwise ReLU6, Dense) trained here on the
MNIST digits, saved as a SavedModel. quantwise takes it through tf2onnx (checked against
TensorFlow) and builds its formats in ONNX Runtime; TensorFlow's own ``TFLiteConverter`` builds
its four post-training formats from the same SavedModel with the same calibration images
(quantwise's ``tflite-converter-*`` recipes), run in LiteRT; and quantwise's own full-integer
``.tflite`` (``static-int8-full``, built on the graph imported into PyTorch) runs beside them.
Every row is scored on the same held-out digits by quantwise's task code and timed with
one thread, in one run.

    .venv/bin/python benchmarks/tf_input.py [--epochs 8]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from quantwise.api import evaluate
from quantwise.measure.env import environment
from quantwise.recipes import get_recipe
from quantwise.tasks import load_task
from quantwise.tasks.imported import imported_task
from quantwise.tasks.mnist import load_digits

QUANTWISE = [
    ("static-int8-minmax", "static-int8", {"calibration": "minmax"}),
    ("static-int8-mse", "static-int8", {"calibration": "mse"}),
    ("dynamic-int8", "dynamic-int8", {}),
    ("weight-int8", "weight-int8", {}),
    ("fp16", "fp16", {}),
]
TFLITE = ["fp32", "dynamic-range", "full-int8", "float16", "16x8"]


def train(d: Path, epochs: int) -> None:
    import keras

    x, y = load_digits()
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm].transpose(0, 2, 3, 1), y[perm]
    keras.utils.set_random_seed(0)
    inp = keras.Input((28, 28, 1), name="image")
    h = keras.layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False)(inp)
    h = keras.layers.ReLU()(keras.layers.BatchNormalization(momentum=0.9)(h))
    h = keras.layers.ReLU(6.0)(keras.layers.DepthwiseConv2D(3, padding="same")(h))
    h = keras.layers.Conv2D(64, 3, strides=2, padding="same", activation="relu")(h)
    out = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.Adam(5e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:3000], y[:3000], epochs=epochs, batch_size=64, verbose=0)
    model.export(str(d / "saved"), verbose=False)
    np.savez(d / "digits.npz", image=x[3000:], labels=y[3000:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8)
    args = ap.parse_args()
    rows: list[tuple[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as d:
        train(Path(d), args.epochs)
        task = load_task(model=str(Path(d) / "saved"), data=str(Path(d) / "digits.npz"))
        kw = {"threads": 1, "batch_sizes": (1, 32), "measure_memory": False, "latency_seconds": 3.0}

        def row(r: dict[str, Any]) -> dict[str, Any]:
            ops = r["integer_ops"]
            return {
                "accuracy": r["metrics"]["accuracy"],
                "lat": {1: r["latency_ms"]["batch_1"]["p50"], 32: r["latency_ms"]["batch_32"]["p50"]},
                "kb": r["size_bytes"] / 1e3,
                "int": f"{ops['integer']}/{ops['total']}",
            }

        rows.append(("fp32: quantwise (tf2onnx, ONNX Runtime)", row(evaluate(task, None, "onnxruntime", **kw))))
        for fid, recipe, over in QUANTWISE:
            r = evaluate(task, get_recipe(recipe, **over), "onnxruntime", **kw)
            rows.append((f"{fid}: quantwise, ONNX Runtime", row(r)))
        for mode in TFLITE:
            recipe = None if mode == "fp32" else get_recipe(f"tflite-converter-{mode}")
            rows.append((f"{mode}: TFLiteConverter, LiteRT", row(evaluate(task, recipe, "tflite", **kw))))
        # quantwise's own full-integer .tflite: the same model imported into PyTorch (checked against
        # ONNX Runtime), quantwise's scales written into the file by litert-torch
        own = imported_task(task)
        full = get_recipe("static-int8", quantize_outputs=True)
        rows.append(("static-int8-full: quantwise's own .tflite, LiteRT", row(evaluate(own, full, "tflite", **kw))))
    env = environment(1)
    n = len(task.labels) if task.labels is not None else 0
    print(f"Keras CNN (SavedModel) on {n} held-out MNIST digits, one thread; {env.get('cpu', '')}")
    print(
        f"conversion: {task.info['converted']}, largest difference to TensorFlow {task.info['conversion_max_abs_diff']:.2g}"
    )
    print("| model | accuracy | Δ pts vs its FP32 | batch 1 ms (speedup) | batch 32 ms (speedup) | size KB | int ops |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows:
        base = next(v for k, v in rows if k.startswith("fp32: TFLite")) if "LiteRT" in name else rows[0][1]
        print(
            f"| {name} | {100 * r['accuracy']:.2f}% | {100 * (r['accuracy'] - base['accuracy']):+.2f} | "
            f"{r['lat'][1]:.3f} ({base['lat'][1] / r['lat'][1]:.2f}x) | {r['lat'][32]:.2f} ({base['lat'][32] / r['lat'][32]:.2f}x) | "
            f"{r['kb']:.1f} | {r.get('int', 'n/a')} |"
        )


if __name__ == "__main__":
    main()
