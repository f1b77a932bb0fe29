"""Quantization-aware training against post-training quantization, per task, in ONNX Runtime.

Every QAT format trains from scratch (a fresh checkpoint folder), on all cores; accuracy is
on the task's test set in ONNX Runtime. Recovery = (QAT - PTQ) / (FP32 - PTQ) where PTQ loses.

    .venv/bin/python benchmarks/qat.py [--tasks mnist-cnn,bbc-minilm]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import warnings

from quantwise.api import evaluate
from quantwise.measure.env import environment
from quantwise.recipes import get_recipe
from quantwise.tasks import load_task

# (label, PTQ recipe, QAT recipe)
PAIRS = [
    ("W8A8 per-channel", get_recipe("static-int8"), get_recipe("qat-w8a8")),
    ("W4A8 per-channel", get_recipe("static-w4a8"), get_recipe("qat-w4a8")),
    ("W4A8 per-channel, LSQ", get_recipe("static-w4a8"), get_recipe("qat-w4a8", lsq=True)),
    ("W4A8 per-tensor", get_recipe("static-w4a8", per_channel=False), get_recipe("qat-w4a8", per_channel=False)),
    (
        "W4A8 per-tensor, LSQ",
        get_recipe("static-w4a8", per_channel=False),
        get_recipe("qat-w4a8", per_channel=False, lsq=True),
    ),
    ("W4 weight-only g32", get_recipe("weight-int4", group_size=32), get_recipe("qat-w4")),
    # no labels anywhere (training or validation): the model learns to reproduce FP32's own outputs
    (
        "W4A8 per-tensor, no labels, distil outputs",
        get_recipe("static-w4a8", per_channel=False),
        get_recipe("qat-w4a8", per_channel=False, distill=True, distill_on="outputs"),
    ),
    (
        "W4A8 per-tensor, no labels, distil outputs, 3 epochs",
        get_recipe("static-w4a8", per_channel=False),
        get_recipe("qat-w4a8", per_channel=False, distill=True, distill_on="outputs", epochs=3),
    ),
]
UNLABELED = "no labels"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="mnist-cnn,bbc-minilm")
    ap.add_argument("--only", help="run the schemes whose label contains this text")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    print(f"{environment(1).get('cpu')}, training on {os.cpu_count()} threads, evaluation in onnxruntime (1 thread)\n")
    print("| task | scheme | FP32 % | PTQ % | QAT % | recovery | QAT train s | steps | best val % |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.tasks.split(","):
        task = load_task(name)
        kw = {"threads": 1, "measure_memory": False, "latency_seconds": 0.5, "batch_sizes": (1,)}
        fp = evaluate(task, None, "onnxruntime", **kw)["metrics"]["accuracy"]
        for label, ptq_r, qat_r in PAIRS:
            if args.only and args.only not in label:
                continue
            ptq = evaluate(task, ptq_r, "onnxruntime", **kw)["metrics"]["accuracy"]
            trained_on = dataclasses.replace(task, train_labels=(), val_labels=()) if UNLABELED in label else task
            with tempfile.TemporaryDirectory() as cache:
                os.environ["QUANTWISE_CACHE"] = cache  # a fresh checkpoint folder: train from scratch
                rec = evaluate(trained_on, qat_r, "onnxruntime", **kw)
            qat, tr = rec["metrics"]["accuracy"], rec["info"]["training"]
            rec_s = f"{(qat - ptq) / (fp - ptq):.2f}" if fp - ptq > 1e-9 else "n/a (PTQ loses nothing)"
            best = f"{100 * tr['best_val_accuracy']:.2f}" if tr["best_val_accuracy"] is not None else "-"
            print(
                f"| {name} | {label} | {100 * fp:.2f} | {100 * ptq:.2f} | {100 * qat:.2f} | {rec_s} | {tr['seconds']:.0f} | "
                f"{tr['steps']} | {best} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
