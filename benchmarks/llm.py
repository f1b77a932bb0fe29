"""smollm2 (SmolLM2-135M-Instruct, FP32 = the dequantized Q4_1 GGUF) on BBC News text: every LLM
format in ONNX Runtime (perplexity, KL and top-1 agreement to FP32, zero-shot topic accuracy,
prefill ms for a 512-token prompt, greedy decode tokens/s with the KV cache), the torch
simulation for parity, and peers in the same run: ONNX Runtime's own MatMulNBits quantizer
(RTN, symmetric and asymmetric, block 128 and 32; and its GPTQ on the same calibration windows)
on the same FP32 export, and MatMulNBits' accuracy_level 4 (int8 compute) against level 0. One thread.

    .venv/bin/python benchmarks/llm.py [--windows 8] [--skip-peers | --peers-only | --peers gptq,rtn,torchao]

ONNX Runtime's MatMulNBits quantizer needs onnx-ir (not a quantwise dependency): pip install onnx-ir==1.1.0
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from quantwise.api import build_quantized, evaluate, lower, run_outputs
from quantwise.measure.decode import measure_decode
from quantwise.measure.env import environment
from quantwise.measure.latency import measure_latency
from quantwise.quiet import torch_threads
from quantwise.sweep.formats import LLM_FORMATS
from quantwise.tasks import load_task

FORMATS = [
    "w8a16-g128",
    "w4a16-g32",
    "w4a16-g32-asym",
    "w4a16-g128",
    "w4a16-g128-gptq",
    "w4a16-g128-awq",
    "w8a8-per-token",
    "w8a8-per-token-sq",
    "w8a8-per-token-rot",
    "w8a8-per-tensor",
]


def row(
    name: str, runtime: str, m: dict[str, Any], base: dict[str, Any], prefill: float | None, tps: float | None
) -> str:
    """One table line; speeds as ratios to FP32 in ONNX Runtime measured in this run."""
    ppl, bppl = m["perplexity"], base["metrics"]["perplexity"]
    bpre, btps = base["latency_ms"]["batch_1"]["p50"], base["decode"].get("tokens_per_s")
    pre = f"{prefill:.0f} ({bpre / prefill:.2f}x)" if prefill else "-"
    dec = f"{tps:.1f} ({tps / btps:.2f}x)" if tps and btps else "-"
    zs = m.get("zero_shot_accuracy")
    zs_s = f"{100 * zs:.1f}" if zs is not None else "-"
    return (
        f"| {name} | {runtime} | {ppl:.3f} | {100 * (ppl / bppl - 1):+.2f}% | {m['kl_to_fp32']:.4f} | "
        f"{100 * m['top1_agreement']:.1f} | {zs_s} | {pre} | {dec} |"
    )


def ort_peer(task: Any, fp32_onnx: Path, work: Path, gptq: bool = False, **kw: Any) -> tuple[dict, float, float]:
    """ONNX Runtime's MatMulNBitsQuantizer on quantwise's FP32 export (the KV-cache step graph, which
    scores with an empty cache and generates). With ``gptq``, by ORT's GPTQ on the task's calibration
    windows (fed with an empty cache)."""
    import logging

    import onnx
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization.matmul_nbits_quantizer import GPTQWeightOnlyQuantConfig, MatMulNBitsQuantizer

    from quantwise.runtime.onnx_lm import OrtLMRunner, kv_shape

    n, kvh, d = kv_shape(task.model.lm)
    past = [f"past_{k}_{i}" for i in range(n) for k in ("key", "value")]

    class Windows(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = [
                {
                    **{n: t.numpy() for n, t in zip(task.input_names, b)},
                    **{p: np.zeros((b[0].shape[0], kvh, 0, d), dtype=np.float32) for p in past},
                }
                for b in task.calibration
            ]
            self.i = 0

        def get_next(self) -> dict | None:
            self.i += 1
            return self.feeds[self.i - 1] if self.i <= len(self.feeds) else None

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    algo = GPTQWeightOnlyQuantConfig(Windows(), block_size=kw["block_size"]) if gptq else None
    q = MatMulNBitsQuantizer(onnx.load(str(fp32_onnx)), **kw, algo_config=algo)
    q.process()
    dst = work / "peer-model.onnx"
    q.model.save_model_to_file(str(dst), use_external_data_format=False)
    return _measure(task, OrtLMRunner(dst, task.input_names, 1, past, (n, kvh, d)))


def torchao_peer(task: Any, config: Any) -> tuple[dict, float, float]:
    """torchao's quantize_ on a copy of the FP32 model, run eagerly in PyTorch (its CPU kernels)."""
    import copy

    from torchao.quantization import quantize_

    from quantwise.runtime.torch_rt import TorchRunner

    model = copy.deepcopy(task.model)
    quantize_(model, config)
    return _measure(task, TorchRunner(model, Path("."), 1))


def _measure(task: Any, runner: Any) -> tuple[dict, float, float]:
    with torch_threads(1):
        m = task.score(run_outputs(runner, task.eval_batches, "peer", task))
        pre = measure_latency(lambda: runner.run(task.latency_input(1)), min_seconds=0.25, max_seconds=3)["p50"]
        dec = measure_decode(runner, task.generation)
    return m, pre, dec["tokens_per_s"]


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> float:
    """Reset the kernel's peak-RSS mark (VmHWM) for this process; returns the current RSS in MB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def peak_rss() -> float:
    return _status_mb("VmHWM")


def with_accuracy_level(path: Path, level: int) -> Path:
    """A copy of an ONNX file with every MatMulNBits node's accuracy_level set."""
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            for a in list(node.attribute):
                if a.name == "accuracy_level":
                    node.attribute.remove(a)
            node.attribute.append(onnx.helper.make_attribute("accuracy_level", level))
    out = path.with_name(f"{path.stem}-acc{level}.onnx")
    onnx.save(model, str(out))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--skip-peers", action="store_true")
    ap.add_argument("--peers-only", action="store_true", help="FP32 and the peers only (no quantwise formats)")
    ap.add_argument("--formats", help="comma-separated subset of the formats (default: all)")
    ap.add_argument(
        "--peers", default="rtn,gptq,torchao", help="which peers run (default: rtn,gptq,torchao; also gptq-asym)"
    )
    ap.add_argument(
        "--calibration-windows",
        type=int,
        help="calibrate quantwise's formats and ORT's GPTQ on the first N calibration windows only (ORT's GPTQ runs "
        "the whole model once per distinct MatMul input per window: 182 x 8 passes of 512 tokens on SmolLM2)",
    )
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    t0 = time.time()
    task = load_task("smollm2", limit=args.windows)
    if args.calibration_windows:
        task = dataclasses.replace(task, calibration=task.calibration[: args.calibration_windows])
    p = task.info["protocol"]
    env = environment(1)
    print(
        f"smollm2, {p['tokens_scored']} tokens in {p['eval_windows']} windows of {p['window']}, "
        f"{len(task.calibration)} calibration windows, "
        f"{p['zero_shot_examples']} zero-shot articles, prefill {p['prefill_tokens']} tokens, decode "
        f"{p['decode_new_tokens']} tokens, 1 thread, {env.get('cpu')}\n"
    )
    kw = {"threads": 1, "latency_seconds": 3.0, "measure_memory": False, "batch_sizes": (1,)}
    base_t = evaluate(task, None, "torch", **kw)
    base = evaluate(task, None, "onnxruntime", **kw)
    print(
        "| format | runtime | perplexity | Δ ppl | KL to FP32 | top-1 agree % | zero-shot % | prefill ms (vs FP32) | decode tok/s (vs FP32) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for b in (base_t, base):
        print(
            row(
                "fp32",
                b["runtime"],
                b["metrics"],
                base,
                b["latency_ms"]["batch_1"]["p50"],
                b["decode"].get("tokens_per_s"),
            ),
            flush=True,
        )
    parity = []
    gptq_info = {}
    chosen = args.formats.split(",") if args.formats else FORMATS
    for fid in [] if args.peers_only else chosen:
        fmt = LLM_FORMATS[fid]
        recipe = fmt.build_recipe()
        t = time.time()
        rss0 = reset_peak_rss()
        qm = build_quantized(task, recipe)
        if "gptq" in fid:
            gptq_info = {"seconds": time.time() - t, "rss_before_mb": rss0, "peak_mb": peak_rss()}
        rec = evaluate(task, recipe, "onnxruntime", quantized=qm, **kw)
        print(
            row(
                fid,
                "onnxruntime",
                rec["metrics"],
                base,
                rec["latency_ms"]["batch_1"]["p50"],
                rec["decode"].get("tokens_per_s"),
            ),
            flush=True,
        )
        sim = evaluate(task, recipe, "torch", quantized=qm, measure_memory=False, batch_sizes=(1,), latency_seconds=0.2)
        same = rec["decode"]["greedy_tokens"][:8] == sim["decode"]["greedy_tokens"][:8]
        parity.append((fid, abs(rec["metrics"]["perplexity"] / sim["metrics"]["perplexity"] - 1), same))
        if fid in ("w4a16-g128", "w8a16-g128"):
            with tempfile.TemporaryDirectory() as d:
                runner, _ = lower(qm, task, "onnxruntime", Path(d), 1)
                acc4 = type(runner)(
                    with_accuracy_level(runner.artifact, 4), task.input_names, 1, runner.past_names, runner.kv
                )
                m, pre, tps = _measure(task, acc4)
                print(row(f"{fid} accuracy_level=4", "onnxruntime", m, base, pre, tps), flush=True)
    peers = set() if args.skip_peers else set(args.peers.split(","))
    with tempfile.TemporaryDirectory() as d:
        runner, _ = (
            lower(None, task, "onnxruntime", Path(d), 1) if peers & {"rtn", "gptq", "gptq-asym"} else (None, None)
        )
        for name, kind, kw2 in (
            ("ORT quantizer RTN int4 b128 asym", "rtn", {"block_size": 128, "is_symmetric": False}),
            ("ORT quantizer RTN int4 b128 sym", "rtn", {"block_size": 128, "is_symmetric": True}),
            ("ORT quantizer RTN int4 b32 asym", "rtn", {"block_size": 32, "is_symmetric": False}),
            ("ORT quantizer GPTQ int4 b128 sym", "gptq", {"block_size": 128, "is_symmetric": True}),
            # its default; on SmolLM2 it fails packing the zero points of 576-wide layers (4.5 blocks of 128)
            ("ORT quantizer GPTQ int4 b128 asym", "gptq-asym", {"block_size": 128, "is_symmetric": False}),
        ):
            if kind in peers:
                t = time.time()
                try:
                    m, pre, tps = ort_peer(task, runner.artifact, Path(d), kind.startswith("gptq"), **kw2)
                except Exception as e:  # a peer's own failure is a row of the table, not the end of the run
                    print(f"| {name} | onnxruntime | failed: {type(e).__name__}: {e} | | | | | | |", flush=True)
                    continue
                print(row(name, "onnxruntime", m, base, pre, tps) + f" <!-- built in {time.time() - t:.0f} s -->")
    if "torchao" in peers:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig

        for name, cfg in (
            ("torchao Int8WeightOnly", Int8WeightOnlyConfig()),
            ("torchao Int8DynamicActivationInt8Weight", Int8DynamicActivationInt8WeightConfig()),
        ):
            m, pre, tps = torchao_peer(task, cfg)
            print(row(name, "torch (torchao)", m, base, pre, tps), flush=True)
    print("\nparity (ONNX Runtime vs the torch simulation of the same QuantizedModel):")
    for fid, rel, same in parity:
        print(
            f"- {fid}: perplexity differs by {100 * rel:.4f}%, first 8 greedy tokens {'identical' if same else 'DIFFER'}"
        )
    if gptq_info:
        fp32_mb = sum(p.numel() * 4 for p in task.model.parameters()) / 2**20
        print(
            f"\nGPTQ (g128, sequential by block): {gptq_info['seconds']:.0f} s; peak RSS {gptq_info['peak_mb']:.0f} MB, "
            f"{gptq_info['peak_mb'] - gptq_info['rss_before_mb']:.0f} MB above the {gptq_info['rss_before_mb']:.0f} MB "
            f"the process held before it (the FP32 model's parameters: {fp32_mb:.0f} MB; GPTQ quantizes a copy of the model)"
        )
    print(f"\nwall time {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
