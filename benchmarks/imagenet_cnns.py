"""ResNet-18 and MobileNetV2 at ImageNet size (224x224, 1,000 classes), random weights: static INT8 in
ONNX Runtime against ONNX Runtime FP32 and against ONNX Runtime's own ``quantize_static`` (QDQ,
per-channel, U8S8, MinMax) on the same export, at batch 1 and 32, in one run, 1 thread.

torchvision does not install beside this project's torch, so both networks are written here with
torchvision's layer structure (ResNet-18: 7x7 stem, max-pool, four stages of two basic blocks with
BatchNorm called in ``forward()``; MobileNetV2: torchvision's inverted-residual table with ReLU6 and
depthwise convs). Weights and BatchNorm statistics are random (speed is the point); the SQNR of the
logits against FP32 is printed as a check that the quantized graph computes the same network.

    .venv/bin/python benchmarks/imagenet_cnns.py [--seconds 6] [--rounds 3] [--models resnet18,mobilenet_v2]

Latency: the three rows are timed in turn, ``--rounds`` times, and each row keeps its median p50.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
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
from quantwise.tasks.base import Task


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        self.relu, self.maxpool = nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        stages, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(512, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(x.mean((2, 3), keepdim=True), 1))


def conv_bn_relu6(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU6()
    )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, t: int) -> None:
        super().__init__()
        h = cin * t
        layers = [conv_bn_relu6(cin, h, 1)] if t != 1 else []
        layers += [conv_bn_relu6(h, h, 3, stride, groups=h), nn.Conv2d(h, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_relu6(3, 32, 3, 2)]
        cin = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(conv_bn_relu6(cin, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 1000))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x).mean((2, 3), keepdim=True), 1))


MODELS = {"resnet18": ResNet18, "mobilenet_v2": MobileNetV2}


def build(name: str) -> nn.Module:
    """The network with torchvision's initialisation of convs and random BatchNorm statistics."""
    torch.manual_seed(0)
    model = MODELS[name]()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = 0.5 + 0.5 * torch.rand(c, generator=g)
            m.bias.data = 0.1 * torch.randn(c, generator=g)
            m.running_mean = 0.1 * torch.randn(c, generator=g)
            m.running_var = 0.5 + torch.rand(c, generator=g)
    return model.eval()


def measure(task: Task, runner: Any, ref: np.ndarray | None) -> dict[str, Any]:
    out = run_outputs(runner, task.eval_batches, task.name)
    rec: dict[str, Any] = {"out": out, "size": artifact_size(runner.artifact), "ops": runner.integer_ops()}
    rec["sqnr"] = (
        float(10 * np.log10((ref**2).sum() / max(((ref - out) ** 2).sum(), 1e-30))) if ref is not None else None
    )
    rec["runner"] = runner
    return rec


def time_interleaved(task: Task, recs: list[dict[str, Any]], seconds: float, rounds: int) -> None:
    """Each row's median latency over ``rounds`` rounds, the rows timed in turn within each round,
    so drift of this shared machine falls on every row alike."""
    for bs in (1, 32):
        b = task.latency_input(bs)
        per: list[list[float]] = [[] for _ in recs]
        for _ in range(rounds):
            for i, r in enumerate(recs):
                per[i].append(measure_latency(lambda r=r, b=b: r["runner"].run(b), max_seconds=seconds / rounds)["p50"])
        for i, r in enumerate(recs):
            r[f"b{bs}"] = float(np.median(per[i]))
            r[f"b{bs}_range"] = (min(per[i]), max(per[i]))


def run_model(name: str, seconds: float, rounds: int, work: Path) -> list[tuple[str, dict[str, Any]]]:
    model = build(name)
    x = torch.randn(40, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    calib, test = x[:8], x[8:]
    task = Task(
        name=name,
        model=model,
        calibration=[(calib[i : i + 4],) for i in range(0, 8, 4)],
        eval_batches=[(test[i : i + 8],) for i in range(0, 32, 8)],
        score=lambda o: {},
        input_names=["input"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        latency_input=lambda n: (test[:n],),
        build_model=lambda: model,
    )
    fp32_file = export_onnx(
        model, task.latency_input(2), work / f"{name}-fp32.onnx", task.input_names, task.dynamic_axes
    )
    base = measure(task, OrtRunner(fp32_file, task.input_names), None)
    qm = quantize(model, get_recipe("static-int8"), task.calibration)
    runner, _ = lower(qm, task, "onnxruntime", work / f"{name}-quantwise")
    ours = measure(task, runner, base["out"])
    peer = ort_static_file(fp32_file, work / f"{name}-ort-static.onnx", task)
    theirs = measure(task, OrtRunner(peer, task.input_names), base["out"])
    time_interleaved(task, [base, ours, theirs], seconds, rounds)
    return [
        ("FP32", base),
        ("quantwise static-int8", ours),
        ("ORT quantize_static (QDQ, per-channel, U8S8)", theirs),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=6.0, help="timing budget per row and batch size")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of interleaved timing (the median is kept)")
    ap.add_argument("--models", default=",".join(MODELS))
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="qw-imagenet-"))
    env = environment(1)
    print(
        f"\n{env.get('cpu', '?')}, torch {torch.__version__}, onnxruntime {env['libraries'].get('onnxruntime', '?')}, 1 thread\n"
    )
    print(
        "| model | format | batch 1 ms [round range] | batch 32 ms [round range] | speedup b1 / b32 vs FP32 | "
        "size MB | integer ops | SQNR dB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        rows = run_model(name, args.seconds, args.rounds, work)
        base = rows[0][1]
        for label, r in rows:
            ops, sqnr = r["ops"], r["sqnr"]
            r["runner"] = None
            print(
                f"| {name} | {label} | {r['b1']:.2f} [{r['b1_range'][0]:.2f}-{r['b1_range'][1]:.2f}] | "
                f"{r['b32']:.1f} [{r['b32_range'][0]:.0f}-{r['b32_range'][1]:.0f}] | {base['b1'] / r['b1']:.2f}x / "
                f"{base['b32'] / r['b32']:.2f}x | {r['size'] / 1e6:.1f} | {ops.get('integer', 0)}/{ops.get('total', 0)} | "
                f"{'' if sqnr is None else f'{sqnr:.1f}'} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
