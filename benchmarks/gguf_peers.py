"""smollm2 in llama.cpp: quantwise's own weights written as GGUF (Q8_0/Q4_0, round to nearest,
AWQ, GPTQ) against llama.cpp's own quantizer (``llama_model_quantize``: Q8_0, Q4_0, Q4_K_M) on
the F32 GGUF of the same FP32 model, every file scored by the same code in llama.cpp: perplexity,
KL and top-1 agreement to the FP32 logits (the task's protocol), zero-shot topic accuracy, file
size, prefill ms for a 512-token prompt and greedy decode tokens/s. One thread.

    .venv/bin/python benchmarks/gguf_peers.py [--skip-gptq]

Needs the llamacpp extra (scripts/bootstrap.sh builds it). llama-cpp-python's quantize API takes
an importance matrix only as a pointer to llama.cpp's own imatrix data, which the Python package
cannot compute: the llama.cpp rows are without one.
"""

from __future__ import annotations

import argparse
import ctypes
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from quantwise.api import build_quantized, run_outputs
from quantwise.measure.decode import measure_decode
from quantwise.measure.env import environment
from quantwise.measure.latency import measure_latency
from quantwise.quiet import torch_threads
from quantwise.recipes import get_recipe
from quantwise.runtime.gguf_write import write_gguf
from quantwise.runtime.llamacpp import LlamaCppRunner
from quantwise.sweep.formats import LLM_FORMATS
from quantwise.tasks import load_task

OURS = ["gguf-q8_0", "gguf-q4_0", "gguf-q4_0-awq"]
PEERS = {"Q8_0": 7, "Q4_0": 2, "Q4_K_M": 15}  # llama_ftype values


def measure(task: Any, path: Path) -> dict[str, Any]:
    runner = LlamaCppRunner(path, threads=1)
    with torch_threads(1):
        m = task.score(run_outputs(runner, task.eval_batches, path.stem, task))
        pre = measure_latency(lambda: runner.run(task.latency_input(1)), min_seconds=0.25, max_seconds=3)["p50"]
        dec = measure_decode(runner, task.generation)
    runner.close()
    return {"metrics": m, "prefill_ms": pre, "tps": dec.get("tokens_per_s"), "mb": path.stat().st_size / 1e6}


def row(name: str, r: dict[str, Any], base: dict[str, Any]) -> str:
    m, b = r["metrics"], base["metrics"]
    zs = m.get("zero_shot_accuracy")
    return (
        f"| {name} | {r['mb']:.1f} | {m['perplexity']:.3f} | {100 * (m['perplexity'] / b['perplexity'] - 1):+.2f}% | "
        f"{m['kl_to_fp32']:.4f} | {100 * m['top1_agreement']:.1f} | {'-' if zs is None else f'{100 * zs:.1f}'} | "
        f"{r['prefill_ms']:.0f} ({base['prefill_ms'] / r['prefill_ms']:.2f}x) | "
        f"{r['tps']:.1f} ({r['tps'] / base['tps']:.2f}x) |"
    )


def llama_quantize(src: Path, out: Path, ftype: int) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize returned {rc}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-gptq", action="store_true", help="leave out GPTQ at group 32 (about 4 minutes)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    t0 = time.time()
    task = load_task("smollm2")
    src = Path(task.info["source"])
    rows = []
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        f32 = work / "fp32.gguf"
        write_gguf(task.model, {}, src, f32)
        base = measure(task, f32)
        rows.append(row("FP32 (F32 GGUF)", base, base))
        for name, ftype in PEERS.items():
            out = work / f"llamacpp-{name}.gguf"
            t = time.time()
            llama_quantize(f32, out, ftype)
            r = measure(task, out)
            rows.append(row(f"llama.cpp {name} ({time.time() - t:.0f} s)", r, base))
            print(rows[-1], flush=True)
        ours: dict[str, Any] = {fid: LLM_FORMATS[fid].build_recipe() for fid in OURS}
        if not args.skip_gptq:
            for method in ("gptq", "awq-gptq"):
                ours[f"gguf-q4_0-{method}"] = get_recipe(
                    "w4a16", group_size=32, method=method, fp16_scales=True, head_bits=8
                )
        for fid, recipe in ours.items():
            t = time.time()
            qm = build_quantized(task, recipe)
            out = work / f"quantwise-{fid}.gguf"
            info = write_gguf(qm.model, qm.layers, src, out)
            r = measure(task, out)
            kinds = "+".join(f"{k}x{n}" for k, n in info["tensors"].items())
            rows.append(row(f"quantwise {fid} ({kinds}, {time.time() - t:.0f} s)", r, base))
            print(rows[-1], flush=True)
            del qm
    env = environment(1)
    print(f"\nsmollm2 in llama.cpp (llama-cpp-python 0.3.36, AVX2 build), {env.get('cpu', '?')}, 1 thread")
    print(
        "| model file | MB | perplexity | Δ ppl | KL to FP32 | top-1 agree % | zero-shot % | prefill ms (vs FP32) | "
        "decode tok/s (vs FP32) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(r)
    print(f"\ntotal {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
