"""Streaming GPTQ (``quantwise stream``) against the in-memory path on a synthetic Llama-style model:
peak resident memory, time, and whether the integer weights are the same; then streaming under an
address-space cap the model does not fit in.

HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/streaming.py [--blocks 24] [--hidden 1024] [--headroom-mib 256]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "llm"))
from big_llama import run_capped, write_big_llama

from quantwise.pipeline.shards import read_streamed

ap = argparse.ArgumentParser()
ap.add_argument("--blocks", type=int, default=24)
ap.add_argument("--hidden", type=int, default=1024)
ap.add_argument("--headroom-mib", type=int, default=256)
ap.add_argument("--method", default="gptq", choices=("gptq", "rtn"))
args = ap.parse_args()
mib = 2**20
with tempfile.TemporaryDirectory() as d:
    folder = Path(d) / "model"
    total = write_big_llama(folder, args.blocks, args.hidden)
    runs = {
        "in memory (quantwise.quantize)": run_capped(folder, Path(d) / "memory", "memory", None, args.method),
        "streaming, no cap": run_capped(folder, Path(d) / "stream", "stream", None, args.method),
        f"streaming, cap = imports + {args.headroom_mib} MiB": run_capped(
            folder, Path(d) / "capped", "stream", args.headroom_mib * mib, args.method
        ),
    }
    whole = run_capped(folder, Path(d) / "unused", "whole", args.headroom_mib * mib, args.method)
    from safetensors import safe_open

    with safe_open(str(Path(d) / "memory" / "all.safetensors"), framework="pt") as f:
        ref = {k: f.get_tensor(k) for k in f.keys()}
    same = {}
    for name in ("stream", "capped"):
        _, layers = read_streamed(Path(d) / name)
        same[name] = (
            all(
                torch.equal(ref[f"{n}.q"], lq.weight_q)
                and torch.equal(ref[f"{n}.scale"], lq.weight_scale)
                and torch.equal(ref[f"{n}.zero_point"], lq.weight_zero_point)
                for n, lq in layers.items()
            )
            and len(layers) == len(ref) // 3
        )

cpu = platform.processor() or platform.machine()
print(
    f"{args.method} int4 g128 of a {args.blocks}-block Llama-style model, hidden {args.hidden}: checkpoint "
    f"{total / mib:.0f} MiB in float32; {cpu}, one thread"
)
print("| path | peak resident memory | time | integer weights vs in memory |")
print("|---|---|---|---|")
for label, r in runs.items():
    check = (
        "reference"
        if label.startswith("in memory")
        else ("identical" if same["capped" if "cap =" in label else "stream"] else "DIFFERENT")
    )
    print(f"| {label} | {r['peak_rss_bytes'] / mib:.0f} MiB | {r['seconds']} s | {check} |")
print(
    f"loading the model whole under the same cap: {whole['whole']}"
    + (f" ({whole.get('error')})" if whole.get("error") else "")
)
