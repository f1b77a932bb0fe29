"""KV-cache INT8 at long context: smollm2's Q4_0 weights (quantwise w4a16-g32) in llama.cpp with
its F16 key/value cache against the Q8_0 cache (what ``kv_cache: int8`` selects), on one
2,048-token prompt of the task's text: perplexity over the prompt, top-1 agreement of the two
caches' next-token predictions, peak resident memory of the process (model, context and cache),
llama.cpp's own KV buffer size, and greedy decode tokens/s after the prompt. Each cache type runs
in its own process so the memory figures do not mix. One thread.

    .venv/bin/python benchmarks/kv_cache.py [--tokens 2048]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _rss_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(gguf: str, ids_file: str, kv: str, out: str) -> None:
    """Load, score the prompt, decode 64 tokens; write figures and the per-position argmax."""
    from quantwise.runtime.llamacpp import LlamaCppRunner

    ids = [int(t) for t in np.load(ids_file)]
    before = _rss_mb("VmRSS")
    runner = LlamaCppRunner(Path(gguf), threads=1, n_ctx=len(ids) + 80, kv_int8=kv == "int8")
    runner.llm.reset()
    runner.llm.eval(ids)
    scores = np.array(runner.llm.scores[: len(ids)], dtype=np.float32)
    logz = scores.max(1) + np.log(np.exp(scores - scores.max(1, keepdims=True)).sum(1))
    nll = float(np.mean(logz[:-1] - scores[np.arange(len(ids) - 1), ids[1:]]))
    t0 = time.perf_counter()
    toks = []
    for _ in range(64):
        nxt = int(np.argmax(runner.llm.scores[runner.llm.n_tokens - 1]))
        toks.append(nxt)
        runner.llm.eval([nxt])
    tps = 64 / (time.perf_counter() - t0)
    np.save(out + ".argmax.npy", scores.argmax(1))
    Path(out).write_text(
        json.dumps(
            {
                "perplexity": float(np.exp(nll)),
                "decode_tps": tps,
                "peak_rss_mb": _rss_mb("VmHWM"),
                "rss_growth_mb": _rss_mb("VmRSS") - before,
                "tokens": toks,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2048)
    args = ap.parse_args()
    from quantwise.api import build_quantized
    from quantwise.recipes import get_recipe
    from quantwise.runtime.gguf_write import write_gguf
    from quantwise.tasks import load_task

    task = load_task("smollm2")
    ids = np.concatenate([b[0][0].numpy() for b in task.eval_batches if b[0].shape[-1] == 512])[: args.tokens]
    cfg = task.model.lm.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    per_token = cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * 2  # keys and values
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        qm = build_quantized(task, get_recipe("w4a16", group_size=32, fp16_scales=True))
        gguf = work / "q4_0.gguf"
        write_gguf(qm.model, qm.layers, task.info["source"], gguf)
        np.save(work / "ids.npy", ids)
        res = {}
        for kv in ("f16", "int8"):
            out = work / f"{kv}.json"
            subprocess.run(
                [sys.executable, __file__, "--child", str(gguf), str(work / "ids.npy"), kv, str(out)], check=True
            )
            res[kv] = json.loads(out.read_text())
            res[kv]["argmax"] = np.load(str(out) + ".argmax.npy")
    f16, i8 = res["f16"], res["int8"]
    agree = float(np.mean(f16["argmax"] == i8["argmax"]))
    n_ctx = len(ids) + 80
    print(f"\nsmollm2 Q4_0 weights in llama.cpp, a {len(ids)}-token prompt (context {n_ctx}), 1 thread")
    print(
        "| KV cache | perplexity | Δ ppl vs F16 cache | top-1 agree with F16 cache | KV bytes (computed) | peak RSS MB | decode tok/s |"
    )
    print("|---|---|---|---|---|---|---|")
    for kv, r, bytes_per in (("F16", f16, 2.0), ("Q8_0 (kv_cache int8)", i8, 34 / 32)):
        kv_mb = n_ctx * per_token * bytes_per / 1e6
        d = 100 * (r["perplexity"] / f16["perplexity"] - 1)
        a = 100.0 if r is f16 else 100 * agree
        print(
            f"| {kv} | {r['perplexity']:.3f} | {d:+.2f}% | {a:.1f}% | {kv_mb:.1f} MB | {r['peak_rss_mb']:.0f} | "
            f"{r['decode_tps']:.1f} |"
        )
    same = sum(a == b for a, b in zip(f16["tokens"], i8["tokens"], strict=True))
    print(f"greedy tokens after the prompt identical: {same}/64")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:6])
    else:
        main()
