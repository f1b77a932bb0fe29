"""GGUF out (exact Q4_0/Q8_0 blocks of quantwise's own weights) and the llama.cpp runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from quantwise.api import build_quantized, evaluate
from quantwise.errors import Unsupported
from quantwise.recipes import get_recipe
from quantwise.runtime.gguf_write import gguf_weights, write_gguf
from quantwise.runtime.registry import check_can_run
from quantwise.tasks import load_task

# one worker builds the tiny GGUFs and their tasks (35 s each: the gguf reader parses the tokenizer's
# 49,152-entry vocabulary three times per load) instead of both
pytestmark = pytest.mark.xdist_group("gguf")


@pytest.fixture(scope="session")  # kept across interleaved modules on its xdist worker
def gguf_task(tiny_gguf: Path, lm_text: Path):
    return load_task(model=str(tiny_gguf), data=str(lm_text))


def test_the_written_fp32_gguf_loads_back_as_the_same_model(tiny_llama: Path, gguf_task) -> None:
    """Names, query/key permutation and hyperparameters: transformers reading our file gets our model."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32).eval()
    ids = gguf_task.eval_batches[0][0]
    with torch.no_grad():
        want = lm(input_ids=ids).logits
        got = gguf_task.model(ids)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)


def test_a_ggufs_float32_conversion_is_kept_and_reloads_as_the_same_model(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """transformers converts a GGUF's tokenizer and dequantizes its tensors on every load (40 s for
    SmolLM2); quantwise keeps the conversion and loads that, until the file changes."""
    import os
    import shutil

    from quantwise.tasks.llm_load import _gguf_conversion, load_causal_lm

    monkeypatch.setenv("QUANTWISE_CACHE", str(tmp_path / "cache"))
    src = Path(shutil.copy2(tiny_gguf, tmp_path / "tiny.gguf"))
    first, tok1 = load_causal_lm(src)
    kept = list((tmp_path / "cache" / "gguf-fp32").iterdir())
    assert len(kept) == 1 and (kept[0] / "quantwise-complete").is_file()
    second, tok2 = load_causal_lm(src)
    assert Path(second.lm.config._name_or_path) == kept[0]  # read from the kept folder, not the GGUF
    text = "Shares in the company rose by 5% on Monday."
    ids = tok1(text, return_tensors="pt")["input_ids"]
    assert torch.equal(ids, tok2(text, return_tensors="pt")["input_ids"]) and len(tok1) == len(tok2)
    sd1, sd2 = first.state_dict(), second.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert second.lm.lm_head.weight is second.lm.model.embed_tokens.weight  # still tied
    with torch.no_grad():
        assert torch.equal(first(ids), second(ids))
    (kept[0] / "model.safetensors").write_bytes(b"damaged")  # a damaged entry is converted again, with a warning
    third, _ = load_causal_lm(src)
    assert "does not load" in capsys.readouterr().err and Path(third.lm.config._name_or_path) == src.parent
    assert all(torch.equal(sd1[k], v) for k, v in third.state_dict().items())
    assert load_causal_lm(src)[0].lm.config._name_or_path == str(kept[0])  # and kept again
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10**9))  # the file changed: convert again
    assert _gguf_conversion(src) != kept[0]


@pytest.mark.parametrize("bits,kind", [(4, "Q4_0"), (8, "Q8_0")])
def test_gguf_blocks_hold_the_quantized_weights_exactly(gguf_task, tmp_path: Path, bits: int, kind: str) -> None:
    recipe = get_recipe(f"w{bits}a16", bits=bits, group_size=32, fp16_scales=True)
    qm = build_quantized(gguf_task, recipe)
    rec = write_gguf(qm.model, qm.layers, gguf_task.info["source"], tmp_path / "q.gguf")
    # 2 blocks x 7 Linears, and the LM head written once as token_embd (tied)
    assert rec["tensors"][kind] == 15 and not rec["f32_layers"]
    back = gguf_weights(tmp_path / "q.gguf", qm.model.lm)
    sd = qm.model.lm.state_dict()
    for name, w in back.items():
        assert np.array_equal(w, sd[name].numpy()), name


def test_weights_gguf_cannot_hold_exactly_are_f32_with_the_reason(gguf_task, tmp_path: Path) -> None:
    qm = build_quantized(gguf_task, get_recipe("w4a16", group_size=32, symmetric=False))
    rec = write_gguf(qm.model, qm.layers, gguf_task.info["source"], tmp_path / "a.gguf")
    assert "Q4_0" not in rec["tensors"] and len(rec["f32_layers"]) == 15
    assert "Q4_1" in next(iter(rec["f32_layers"].values()))
    with pytest.raises(Unsupported, match="llama.cpp would run .* in F32"):
        check_can_run("llamacpp", qm)


def test_gguf_output_needs_a_gguf_source(tiny_llama: Path, lm_text: Path, tmp_path: Path) -> None:
    task = load_task(model=str(tiny_llama), data=str(lm_text))
    with pytest.raises(Unsupported, match="convert_hf_to_gguf"):
        write_gguf(task.model, {}, task.info["source"], tmp_path / "x.gguf")


def test_llamacpp_computes_what_the_simulation_says(gguf_task) -> None:
    pytest.importorskip("llama_cpp", reason="the llamacpp extra did not build (scripts/bootstrap.sh says why)")

    def ev(rt: str, recipe=None, qm=None) -> dict:
        return evaluate(
            gguf_task, recipe, rt, batch_sizes=(1,), measure_memory=False, latency_seconds=0.3, quantized=qm
        )

    fp32_sim = ev("torch")
    fp32_cpp = ev("llamacpp")
    # the same model in float: llama.cpp's F32 kernels agree with PyTorch's on every next token
    assert fp32_cpp["metrics"]["top1_agreement"] >= 0.99
    assert fp32_cpp["metrics"]["kl_to_fp32"] < 1e-3
    assert fp32_cpp["metrics"]["perplexity"] == pytest.approx(fp32_sim["metrics"]["perplexity"], rel=1e-3)
    assert fp32_cpp["decode"]["status"] == "ok"
    assert fp32_cpp["decode"]["greedy_tokens"][:8] == fp32_sim["decode"]["greedy_tokens"][:8]
    recipe = get_recipe("w4a16", group_size=32, fp16_scales=True)
    qm = build_quantized(gguf_task, recipe)
    sim = ev("torch", recipe, qm)
    cpp = ev("llamacpp", recipe, qm)
    assert cpp["integer_ops"]["kernels"].get("Q4_0") == 15
    # llama.cpp rounds activations to 8-bit blocks for its Q4_0 dot products; the simulation does not
    assert cpp["metrics"]["perplexity"] == pytest.approx(sim["metrics"]["perplexity"], rel=0.02)
    assert abs(cpp["metrics"]["kl_to_fp32"] - sim["metrics"]["kl_to_fp32"]) < 0.01


def test_kv_int8_simulation_is_llama_cpps_q8_0_block() -> None:
    import gguf

    from quantwise.runtime.kvcache import q8_0

    x = torch.randn(3, 2, 7, 64) * torch.logspace(-2, 2, 64)  # tokens x heads, channels of very different range
    ref = gguf.quants.dequantize(
        gguf.quants.quantize(x.numpy().reshape(-1, 64), gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    )
    assert np.array_equal(q8_0(x).numpy().reshape(-1, 64), ref)
    assert torch.equal(q8_0(q8_0(x)), q8_0(x))  # stored values quantize to themselves: a cache can be re-read


def test_kv_int8_in_llamacpp_and_the_simulation(tiny_gguf_hd64: Path, lm_text: Path) -> None:
    pytest.importorskip("llama_cpp", reason="the llamacpp extra did not build (scripts/bootstrap.sh says why)")
    task = load_task(model=str(tiny_gguf_hd64), data=str(lm_text))
    recipe = get_recipe("w4a16", group_size=32, fp16_scales=True, kv_cache="int8")
    qm = build_quantized(task, recipe)
    with pytest.raises(Unsupported, match="float KV cache"):
        check_can_run("onnxruntime", qm)
    from quantwise.runtime.torch_sim import lower_torch

    plain = build_quantized(task, get_recipe("w4a16", group_size=32, fp16_scales=True))
    ids = task.eval_batches[0][0]
    with torch.no_grad():
        assert not torch.equal(lower_torch(qm)(ids), lower_torch(plain)(ids))  # the cache rounding is simulated
    kw = {"batch_sizes": (1,), "measure_memory": False, "latency_seconds": 0.3, "quantized": qm}
    sim = evaluate(task, recipe, "torch", **kw)
    cpp = evaluate(task, recipe, "llamacpp", **kw)
    assert cpp["gguf"]["kv_cache"] == "int8"
    assert cpp["metrics"]["perplexity"] == pytest.approx(sim["metrics"]["perplexity"], rel=0.02)


def test_compare_recommends_and_exports_a_gguf_llama_cpp_reloads(
    tiny_gguf_hd64: Path, lm_text: Path, tmp_path: Path
) -> None:
    pytest.importorskip("llama_cpp", reason="the llamacpp extra did not build (scripts/bootstrap.sh says why)")
    import json

    from test_llm import run_cli

    out = tmp_path / "cmp"
    r = run_cli(
        "compare",
        "--model",
        str(tiny_gguf_hd64),
        "--data",
        str(lm_text),
        "--formats",
        "gguf-q4_0",
        "--runtimes",
        "llamacpp",
        "--no-memory",
        "--explain",
        "none",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    by = {(x["format"], x["runtime"]): x for x in res["records"]}
    q4 = by[("gguf-q4_0", "llamacpp")]
    assert q4["gguf"]["tensors"] == {"Q4_0": 14, "Q8_0": 1, "F32": 5}  # the LM head/embedding at 8 bits
    # the winner depends on timings (a tie keeps FP32); when the GGUF wins, its export is reloaded identically
    if (res["recommendation"].get("winner") or {}).get("key") == "gguf-q4_0 · llamacpp":
        meta = json.loads((out / "recommended" / "quantwise-export.json").read_text())
        assert (out / "recommended" / "model.gguf").is_file() and meta["verified"]["identical"]
