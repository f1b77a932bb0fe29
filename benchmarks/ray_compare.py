"""compare in-process vs through a local Ray (every core, one measuring unit): same records, and Ray's overhead.

HF_HUB_OFFLINE=1 QUANTWISE_PROGRESS=0 .venv/bin/python benchmarks/ray_compare.py [--task mnist-cnn] [--limit 1000]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from quantwise.sweep.compare import CompareSettings, run_compare
from quantwise.sweep.recommend import Budget
from quantwise.tasks import load_task

ap = argparse.ArgumentParser()
ap.add_argument("--task", default="mnist-cnn")
ap.add_argument("--limit", type=int, default=1000)
ap.add_argument("--formats", default="fp32,dynamic-int8,static-int8-minmax,static-int8-entropy,weight-int8")
ap.add_argument("--runtimes", default="torch,onnxruntime")
args = ap.parse_args()
task = load_task(args.task, limit=args.limit)
kw = dict(
    formats=args.formats,
    runtimes=args.runtimes,
    max_drop=Budget(1.0, False),
    measure_memory=False,
    latency_seconds=1.0,
    explain="none",
)
with tempfile.TemporaryDirectory() as d:
    t0 = time.perf_counter()
    here = run_compare(task, CompareSettings(**kw), Path(d) / "in-process")
    t1 = time.perf_counter()
    there = run_compare(task, CompareSettings(executor="ray", **kw), Path(d) / "ray")
    t2 = time.perf_counter()
same = sum(
    a["metrics"] == b["metrics"] and a.get("per_example") == b.get("per_example")
    for a, b in zip(here["records"], there["records"])
)
n = len(here["records"])
print(
    f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; task {args.task} (limit {args.limit})"
)
print("| executor | trials | wall s | records with identical metrics and per-example outcomes |")
print("|---|---|---|---|")
print(f"| in-process | {n} | {t1 - t0:.1f} | (reference) |")
print(f"| ray (local, {os.cpu_count()} CPUs) | {len(there['records'])} | {t2 - t1:.1f} | {same}/{n} |")
print(f"overhead: ray wall time / in-process = {(t2 - t1) / (t1 - t0):.2f}x (includes starting Ray)")
stages = [r.get("stage_seconds", {}) for r in there["records"]]
build = sum(st.get("build_and_score", 0.0) for st in stages)
meas = sum(st.get("measure", 0.0) for st in stages)
print(f"stage seconds summed over trials: build+score {build:.1f}, measure {meas:.1f}")
print("projection (assumptions: builds fan out evenly over W one-CPU workers, every measurement runs on the one")
print("labelled node in series, no transfer cost, Ray start excluded): wall between max(B/W, M) and B/W + M")
for w in (2, 8, 32):
    print(f"| W={w} | {max(build / w, meas):.1f} - {build / w + meas:.1f} s |")
