"""Fixed point on mnist-cnn: accuracy in every runtime, agreement between them, the C export, and
a peer: ONNX Runtime's own quantize_static on the same calibration digits. One run, 1 thread.

    .venv/bin/python benchmarks/fixedpoint.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from peers import ort_peers

from quantwise.api import evaluate, lower, quantize
from quantwise.fixedpoint.cexport import compile_and_run, export_c, plan_memory
from quantwise.fixedpoint.executor import execute, integer_params
from quantwise.fixedpoint.simulate import enter
from quantwise.measure.env import environment
from quantwise.recipes import get_recipe
from quantwise.tasks import load_task

VARIANTS = [("fixed-point int8", {}), ("fixed-point int8 pot (Qm.n)", {"pot_scales": True})]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    task = load_task("mnist-cnn")
    env = environment(1)
    print(f"mnist-cnn, {sum(len(b[0]) for b in task.eval_batches)} test digits, 1 thread, {env.get('cpu')}\n")
    kw = {"threads": 1, "latency_seconds": args.seconds, "measure_memory": False}
    base = {rt: evaluate(task, None, rt, **kw) for rt in ("torch", "onnxruntime")}
    print(
        "| format | runtime | accuracy % | Δ pts vs FP32 | b1 p50 ms | b32 p50 ms | speedup b32 vs FP32 (same runtime family) | integer ops |"
    )
    print("|---|---|---|---|---|---|---|---|")

    def line(name: str, rec: dict, ref: dict) -> None:
        lat = rec["latency_ms"]
        ops = rec["integer_ops"] or {}
        print(
            f"| {name} | {rec['runtime']} | {100 * rec['metrics']['accuracy']:.3f} | "
            f"{100 * (rec['metrics']['accuracy'] - base['torch']['metrics']['accuracy']):+.3f} | {lat['batch_1']['p50']:.3f} | "
            f"{lat['batch_32']['p50']:.2f} | {ref['latency_ms']['batch_32']['p50'] / lat['batch_32']['p50']:.2f}x | "
            f"{ops.get('integer', 0)}/{ops.get('total', 0)} |"
        )

    for rec in base.values():
        line("fp32", rec, rec)
    notes = []
    for name, over in VARIANTS:
        qm = quantize(task.model, get_recipe("fixed-point", **over), task.calibration)
        for rt in ("integer", "onnxruntime", "torch"):
            rec = evaluate(task, qm.recipe, rt, quantized=qm, **kw)
            line(name, rec, base["onnxruntime" if rt == "onnxruntime" else "torch"])
        notes.append(_parity(task, qm, name))
    with tempfile.TemporaryDirectory() as d:
        for peer in ort_peers(task, Path(d), (1, 32), args.seconds):
            if "static" in peer["recipe"]:
                line(f"peer: {peer['recipe']}", peer, base["onnxruntime"])
    print()
    for n in notes:
        print(n)


def _parity(task, qm, name: str) -> str:
    fin, fout = qm.plan.formats[qm.plan.program.input], qm.plan.formats[qm.plan.program.output]
    x = np.concatenate([enter(b[0], fin).numpy() for b in task.eval_batches])
    p = integer_params(qm.plan)
    t0 = time.perf_counter()
    ours = execute(p, x)
    t_np = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        runner, _ = lower(qm, task, "onnxruntime", Path(d))
        ort = np.concatenate([np.round(runner.run(b) / fout.scale).astype(np.int64) for b in task.eval_batches])
        folder = export_c(qm, Path(d) / "c")
        t0 = time.perf_counter()
        c = compile_and_run(folder, x, ours.shape[1])
        t_c = time.perf_counter() - t0  # includes gcc
        c_bytes = (folder / "qw_model").stat().st_size
    mem = plan_memory(qm.plan)
    diff = np.abs(ort - ours)
    acc = {
        k: f"{v.to_dict(p.worst_bits[k])['accumulator_bits_observed']}/{p.worst_bits[k]}" for k, v in p.stats.items()
    }
    return (
        f"- {name}: integer vs ONNX Runtime outputs: max |diff| {diff.max()} steps, {100 * (diff > 0).mean():.3f}% differ, "
        f"top-1 agreement {100 * (ours.argmax(1) == ort.argmax(1)).mean():.2f}%; C vs integer executor bit-identical: "
        f"{np.array_equal(c, ours)} on {len(x)} digits (NumPy {t_np:.1f} s, C {t_c:.1f} s incl. gcc -O2, binary {c_bytes / 1e6:.2f} MB); "
        f"C memory: {mem.arena_bytes:,} bytes of activation RAM (one int32 buffer per tensor: {_int32_buffer_bytes(qm):,}), "
        f"{mem.constant_bytes:,} bytes of constants; accumulator bits observed/worst case: {acc}"
    )


def _int32_buffer_bytes(qm) -> int:
    """What the C took before its buffers were planned and packed: one int32 array per tensor."""
    prog = qm.plan.program
    shapes = [prog.input_shape] + [n.attrs["shape"] for n in prog.nodes if n.op not in ("flatten", "reshape")]
    return 4 * sum(math.prod(s) for s in shapes)


if __name__ == "__main__":
    main()
