"""Where ONNX Runtime spends bbc-minilm's time, FP32 against static INT8 (issue 13's "say where
the remaining time goes"). Both graphs come from quantwise (``evaluate(..., out=...)`` writes the
``model.onnx`` each runtime ran); ONNX Runtime's own profiler times every kernel at batch 1, one
thread, on a random document of each length, and the kernels are summed by operator type.

    .venv/bin/python benchmarks/ort_profile.py [--lengths 128 256] [--runs 20]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from quantwise.api import evaluate
from quantwise.measure.env import environment
from quantwise.tasks import load_task

# attention's two products of activations (Q·Kᵀ is fused with its scale; weights·V stays a MatMul)
ATTENTION_NOTE = "FP32's MatMul row holds the Linear layers and attention's weights·V; INT8's only the latter"


def profile(path: Path, length: int, runs: int) -> dict[str, float]:
    """Milliseconds per run by operator type, from ONNX Runtime's profiler."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.enable_profiling = True
    so.profile_file_prefix = str(path.parent / "profile")
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {
        i.name: (rng.integers(1000, 5000, (1, length)) if "ids" in i.name else np.ones((1, length))).astype(np.int64)
        for i in s.get_inputs()
    }
    for _ in range(3):
        s.run(None, feed)
    s.end_profiling()  # the warm-up runs are not counted
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        s.run(None, feed)
    trace = Path(s.end_profiling())
    by: collections.Counter[str] = collections.Counter()
    for e in json.loads(trace.read_text()):
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by[e["args"]["op_name"]] += e["dur"]
    os.remove(trace)
    return {op: us / runs / 1000 for op, us in by.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    task = load_task("bbc-minilm")
    env = environment(1)
    print(
        f"bbc-minilm, batch 1, 1 thread, {env['cpu']} ({', '.join(env['cpu_flags'])}), "
        f"onnxruntime {env['libraries']['onnxruntime']}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for fmt in ("fp32", "static-int8"):
            evaluate(task, fmt, "onnxruntime", out=Path(tmp) / fmt, batch_sizes=(), measure_memory=False)
            paths[fmt] = Path(tmp) / fmt / "model.onnx"
        for length in args.lengths:
            prof = {fmt: profile(p, length, args.runs) for fmt, p in paths.items()}
            totals = {fmt: sum(p.values()) for fmt, p in prof.items()}
            print(f"\n{length} tokens: FP32 {totals['fp32']:.2f} ms, static INT8 {totals['static-int8']:.2f} ms")
            print(f"({totals['fp32'] / totals['static-int8']:.2f}x); {ATTENTION_NOTE}\n")
            print("| operator | FP32 ms | share | static INT8 ms | share |")
            print("|---|---|---|---|---|")
            ops = sorted(
                set(prof["fp32"]) | set(prof["static-int8"]), key=lambda o: -max(p.get(o, 0) for p in prof.values())
            )
            for op in ops[:14]:
                cells = [
                    f"{p[op]:.2f} | {100 * p[op] / totals[f]:.1f}%" if op in p else "- | -" for f, p in prof.items()
                ]
                print(f"| {op} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
