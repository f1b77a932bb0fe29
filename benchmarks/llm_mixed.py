"""The LLM mixed-precision searches on SmolLM2: how long the search takes, what it promotes, and the
result in ONNX Runtime (quality on the 8 test windows, prefill and decode speed, the runtime against
the simulation). Prints one JSON line per format.

    .venv/bin/python benchmarks/llm_mixed.py [--max-drop 2.0] mixed-w4a8-w8a8 mixed-w4-w8
"""

from __future__ import annotations

import argparse
import json
import time

from quantwise.api import build_quantized, evaluate
from quantwise.sweep.formats import LLM_FORMATS
from quantwise.tasks.llm import build_smollm2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("formats", nargs="+", choices=[f for f in LLM_FORMATS if f.startswith("mixed")])
    ap.add_argument("--max-drop", type=float, default=2.0, help="perplexity rise budget, percent")
    args = ap.parse_args()
    task = build_smollm2()
    for fid in args.formats:
        recipe = LLM_FORMATS[fid].build_recipe(max_drop_points=args.max_drop)
        t = time.perf_counter()
        qm = build_quantized(task, recipe)
        search_s = time.perf_counter() - t
        info = {k: qm.info[k] for k in ("validation_drop_points", "budget_met", "evaluations", "ranked_by")}
        rec = evaluate(task, recipe, "onnxruntime", quantized=qm, batch_sizes=(1,), measure_memory=False)
        row = {
            "format": fid,
            "search_s": round(search_s, 1),
            "int8_layers": len(qm.info["int8_layers"]),
            "layers": len(qm.layers),
            **info,
            "metrics": rec["metrics"],
            "prefill_ms": rec["latency_ms"]["batch_1"]["p50"],
            "decode_tok_s": rec.get("decode", {}).get("tokens_per_s"),
            "size_bytes": rec["size_bytes"],
            "kernels": rec["integer_ops"]["kernels"],
            "runtime_vs_simulation": rec["info"].get("runtime_vs_simulation"),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
