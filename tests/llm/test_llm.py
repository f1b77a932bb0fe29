"""Causal LMs: the task's protocol and metrics, tied heads, sequential GPTQ, compare, bad input."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from quantwise.api import evaluate, quantize
from quantwise.numerics import INT4, quantize_tensor
from quantwise.numerics.granularity import PerGroup
from quantwise.quantized import LayerQuant
from quantwise.recipes import get_recipe
from quantwise.tasks import load_task
from quantwise.transform.gptq_seq import collect_hessians, sequential_gptq


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QUANTWISE_PROGRESS": "0", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "quantwise.cli", *args], capture_output=True, text=True, env=env, timeout=600
    )


@pytest.fixture(scope="module")
def tiny_task(tiny_llama: Path, lm_text: Path):
    return load_task(model=str(tiny_llama), data=str(lm_text))


def test_user_lm_task_scores_fp32_against_itself(tiny_task) -> None:
    assert tiny_task.info["kind"] == "causal-lm"
    assert tiny_task.info["protocol"]["window"] == 128  # capped by the model's max positions
    assert not tiny_task.metric_spec().higher_is_better  # the budget metric is perplexity
    rec = evaluate(tiny_task, None, "torch", measure_memory=False, latency_seconds=0.2, batch_sizes=(1,))
    m = rec["metrics"]
    assert m["tokens_scored"] == tiny_task.info["protocol"]["tokens_scored"]
    assert m["top1_agreement"] == 1.0 and m["kl_to_fp32"] < 1e-3  # FP32 reference stored as float16
    assert 1.0 < m["perplexity"] < 1e6
    assert rec["decode"]["status"] == "ok" and len(rec["decode"]["greedy_tokens"]) == 65
    assert rec["latency_ms"]["decode_token"]["p50"] > 0


def test_tied_lm_head_stays_tied_and_is_recorded(tiny_task) -> None:
    qm = quantize(tiny_task.model, get_recipe("weight-int4", group_size=32), tiny_task.calibration)
    assert qm.info["tied_weights"] == {"lm.model.embed_tokens": "lm.lm_head"}
    assert "lm.model.embed_tokens" not in qm.skipped  # not "kept in float": it holds the head's int4 table
    emb, head = qm.model.lm.model.embed_tokens.weight, qm.model.lm.lm_head.weight
    assert emb.data_ptr() == head.data_ptr()
    assert torch.equal(head, qm.layers["lm.lm_head"].dequantized_weight().reshape(head.shape))


def test_a_tied_quantized_head_is_saved_once_and_loads_back_tied(tiny_task, tmp_path: Path) -> None:
    from quantwise.quantized import QuantizedModel, artifact_size

    qm = quantize(tiny_task.model, get_recipe("weight-int4", group_size=32), tiny_task.calibration)
    folder = qm.save(tmp_path / "q")
    meta = json.loads((folder / "quantwise.json").read_text())
    assert meta["aliases"] == {"lm.model.embed_tokens.weight": "lm.lm_head.weight"}
    table = tiny_task.model.lm.model.embed_tokens.weight.numel() * 4
    assert artifact_size(folder) < table / 4  # no float copy of the (tied) embedding table beside the int4 head
    back = QuantizedModel.load(folder, tiny_task.build_model())
    emb, head = back.model.lm.model.embed_tokens.weight, back.model.lm.lm_head.weight
    assert torch.equal(emb, qm.model.lm.model.embed_tokens.weight) and torch.equal(head, emb)


def test_gptq_calibrates_each_block_on_the_quantized_blocks_before_it(tiny_task) -> None:
    model = copy.deepcopy(tiny_task.model)
    linear = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in n}
    seen: dict[str, torch.Tensor] = {}

    def rtn4(name: str, mod: nn.Module, h: torch.Tensor) -> None:  # records the Hessian it was given
        seen[name] = h
        q, s, z = quantize_tensor(mod.weight.detach(), INT4, PerGroup(32), True)
        deq = LayerQuant("linear", "weight_only", q, s, z, "int4", PerGroup(32)).dequantized_weight()
        with torch.no_grad():
            mod.weight.copy_(deq.reshape(mod.weight.shape))

    info = sequential_gptq(model, linear, tiny_task.calibration, rtn4)
    assert info is not None and info["gptq_blocks"] == "lm.model.layers (2)"
    name = "lm.model.layers.1.self_attn.q_proj"

    def hessian(m: nn.Module) -> torch.Tensor:
        return collect_hessians({name: m.get_submodule(name)}, lambda: [m(*b) for b in tiny_task.calibration])[name]

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().max() / b.abs().max())

    # block 1 was calibrated on what the model computes with block 0 quantized, not on the float model
    assert rel(seen[name], hessian(model)) < 1e-6
    assert rel(seen[name], hessian(tiny_task.model)) > 1e-3
    # and the GPTQ recipe runs in that order
    qm = quantize(tiny_task.model, get_recipe("weight-int4", group_size=32, method="gptq"), tiny_task.calibration)
    assert qm.info["gptq_order"] == "sequential by block" and qm.info["gptq_outside_blocks"] == ["lm.lm_head"]


def test_compare_on_a_user_llm(tiny_llama: Path, lm_text: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    r = run_cli(
        "compare",
        "--model",
        str(tiny_llama),
        "--data",
        str(lm_text),
        "--formats",
        "w8a16-g128,w4a16-g128",
        "--no-memory",
        "--explain",
        "none",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    rec = res["recommendation"]
    assert rec["metric"] == "perplexity" and rec["higher_is_better"] is False
    assert res["settings"]["max_drop"] == "2%"
    by = {(x["format"], x["runtime"]): x for x in res["records"]}
    assert by[("w4a16-g128", "onnxruntime")]["decode"]["status"] == "ok"  # the KV-cache step graph
    assert by[("w4a16-g128", "onnxruntime")]["integer_ops"]["kernels"].get("MatMulNBits", 0) >= 15
    assert "decode_token" in by[("fp32", "torch")]["latency_ms"]
    if ("fp32", "llamacpp") in by:  # installed: a folder has no .gguf to copy the tokenizer from
        assert by[("fp32", "llamacpp")]["status"] == "unsupported"
        assert "convert_hf_to_gguf" in by[("fp32", "llamacpp")]["error"]


def test_a_gpt2_folder_is_a_causal_lm_and_runs_with_its_cache(tiny_gpt2: Path, lm_text: Path) -> None:
    """GPT2LMHeadModel (not *ForCausalLM): Conv1D layers, learned positions (the decode prompt leaves
    room for the new tokens), a tied head saved once."""
    task = load_task(model=str(tiny_gpt2), data=str(lm_text))
    assert task.info["kind"] == "causal-lm"
    proto = task.info["protocol"]
    assert proto["window"] == 128 and proto["decode_prompt_tokens"] + proto["decode_new_tokens"] <= 128
    kw = {"measure_memory": False, "latency_seconds": 0.2, "batch_sizes": (1,)}
    base = evaluate(task, None, "onnxruntime", **kw)
    unique = sum(p.numel() * p.element_size() for p in task.model.parameters())  # a tied table counted once
    assert unique < base["size_bytes"] < 1.1 * unique  # the exported graph holds the tied table once
    torch_fp32 = evaluate(task, None, "torch", **{**kw, "batch_sizes": ()})
    assert base["metrics"]["perplexity"] == pytest.approx(torch_fp32["metrics"]["perplexity"], rel=1e-4)
    rec = evaluate(task, "w4a16", "onnxruntime", **kw)
    assert rec["status"] == "ok" and rec["decode"]["status"] == "ok"
    assert rec["integer_ops"]["kernels"].get("MatMulNBits", 0) == 2 * 4 + 1  # every Conv1D and the head
    assert rec["info"]["rewritten_as_linear"] and len(rec["quantized_layers"]) == 2 * 4 + 2  # + the position table
    # the tied table is gathered from the int4 head's own bytes (GatherBlockQuantized), not a float copy
    assert rec["size_bytes"] < base["size_bytes"] / 4
    # the simulation's greedy tokens are the runtime's, from the same prompt
    sim = evaluate(task, "w4a16", "torch", **kw)
    n = len(sim["decode"]["greedy_tokens"])
    assert rec["decode"]["greedy_tokens"][:n] == sim["decode"]["greedy_tokens"]


def test_explain_compares_gpt2_conv1d_weights_in_their_quantized_orientation(tiny_gpt2: Path, lm_text: Path) -> None:
    from quantwise.explain.run import explain

    task = load_task(model=str(tiny_gpt2), data=str(lm_text))
    res = explain(task, get_recipe("dynamic-int8", reduce_range="off"), top=4)  # 8-bit weights on every CPU
    measured = {n: st for r in res["layers"] for n, st in r["stats"].get("layers_measured", {}).items()}
    assert len(measured) == 2 * 4 + 2  # every Conv1D, the head and the position table
    # int8 per channel: well under 1% (a transposed comparison read about 141%)
    assert max(st["weight_error"] for st in measured.values()) < 0.01
    assert not any("weight rounding" in c for r in res["layers"] for c in r["causes"])


def test_a_simulation_is_never_timed_as_a_decode_speed(tiny_task) -> None:
    rec = evaluate(tiny_task, "w4a16", "torch", measure_memory=False, latency_seconds=0.2, batch_sizes=(1,))
    assert rec["decode"]["status"] == "simulation" and len(rec["decode"]["greedy_tokens"]) == 8
    assert "decode_token" not in rec["latency_ms"]


def test_short_text_is_a_one_line_error(tiny_llama: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("Just a few words.")
    r = run_cli("quantize", "--model", str(tiny_llama), "--data", str(short), "--recipe", "w8a16")
    assert r.returncode == 2 and "too short" in r.stderr and "Traceback" not in r.stderr


def test_a_folder_without_tokenizer_is_a_one_line_error(tiny_llama: Path, lm_text: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(tiny_llama / f, bare / f)
    r = run_cli("quantize", "--model", str(bare), "--data", str(lm_text), "--recipe", "w8a16")
    assert r.returncode == 2 and "cannot load the causal LM" in r.stderr and "Traceback" not in r.stderr


def test_text_for_a_model_that_is_not_a_causal_lm(tmp_path: Path, lm_text: Path) -> None:
    enc = tmp_path / "enc"
    enc.mkdir()
    (enc / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    r = run_cli("quantize", "--model", str(enc), "--data", str(lm_text), "--recipe", "w8a16")
    assert r.returncode == 2 and "plain text" in r.stderr


def test_missing_gguf_file(tmp_path: Path, lm_text: Path) -> None:
    r = run_cli("quantize", "--model", str(tmp_path / "nope.gguf"), "--data", str(lm_text), "--recipe", "w8a16")
    assert r.returncode == 2 and "not found" in r.stderr


def test_explain_names_the_block_and_the_outlier_channel(tiny_task) -> None:
    from quantwise.explain.run import explain

    model = copy.deepcopy(tiny_task.model)
    with torch.no_grad():
        model.lm.model.layers[1].input_layernorm.weight[5] *= 200.0  # one outlier channel into q/k/v of block 1
    task = dataclasses.replace(tiny_task, model=model)
    res = explain(task, get_recipe("dynamic-int8"), top=3)
    s = res["summary"]
    assert s["metric"] == "perplexity" and s["fraction"] is False and s["groups"] == 3  # 2 blocks + the LM head
    rows = res["layers"]
    assert [r["only_metric"] for r in rows] == sorted((r["only_metric"] for r in rows), reverse=True)
    block1 = next(r for r in rows if r["name"] == "lm.model.layers.1")
    assert any("input channels [5" in c for c in block1["causes"]), block1["causes"]
    assert block1["stats"]["layers_measured"]["lm.model.layers.1.self_attn.q_proj"]["top_channels"][0] == 5


def test_qat_and_static_mixed_on_an_llm_are_refused_in_one_line(tiny_task) -> None:
    """Refused before any work (an Unsupported: exit 2 from the CLI, n/a in compare)."""
    from quantwise.api import build_quantized
    from quantwise.errors import Unsupported

    with pytest.raises(Unsupported, match="not built for causal LMs"):
        build_quantized(tiny_task, get_recipe("qat-w8a8"))
    with pytest.raises(Unsupported, match="pass --base dynamic-int8, or --optimize size"):
        build_quantized(tiny_task, get_recipe("mixed"))


def test_mixed_on_an_llm_promotes_the_most_sensitive_layers_until_perplexity_meets_the_budget(tiny_task) -> None:
    from quantwise.api import build_quantized
    from quantwise.pipeline.mixed import window_perplexity
    from quantwise.runtime.torch_sim import lower_torch

    model = copy.deepcopy(tiny_task.model)
    with torch.no_grad():  # sharper next-token distributions: perplexity then feels int4 rounding (random weights)
        model.lm.model.embed_tokens.weight.mul_(30.0)
    task = dataclasses.replace(tiny_task, model=model)
    ref = window_perplexity(model, task.validation)

    def rise(qm) -> float:
        return 100.0 * (window_perplexity(lower_torch(qm), task.validation) / ref - 1.0)

    all_int4 = rise(build_quantized(task, get_recipe("mixed", optimize="size", max_drop=1000.0)))
    assert all_int4 > 5.0  # INT4 everywhere (GPTQ, g32) misses a 1% budget on validation
    qm = build_quantized(task, get_recipe("mixed", optimize="size", max_drop=1.0))
    info = qm.info
    promoted, ranking = info["int8_layers"], list(info["precision_map"])
    assert promoted and promoted == ranking[: len(promoted)]  # the most sensitive first
    assert info["budget_met"] and info["validation_criterion"] == "perplexity rise vs FP32 (%)"
    assert info["validation_drop_points"] <= 1.0 and abs(info["validation_drop_points"] - rise(qm)) < 1e-6
    assert {qm.layers[n].weight_qtype for n in promoted} == {"int8"}
    assert {qm.layers[n].weight_qtype for n in ranking[len(promoted) :]} == {"int4"}
    # ranked by block: a promoted block is promoted whole (one sensitivity pass per block, not per layer)
    assert info["ranked_by"].startswith("block") and info["evaluations"]["sensitivity passes"] < len(ranking)
    for i in range(2):
        block = [n for n in ranking if n.startswith(f"lm.model.layers.{i}.")]
        assert len(block) == 7 and len({n in promoted for n in block}) == 1
    # ONNX Runtime runs the mix (INT4 and INT8 MatMulNBits) and computes what the simulation does
    kw = {"measure_memory": False, "latency_seconds": 0.1, "batch_sizes": (1,), "quantized": qm}
    ort = evaluate(task, qm.recipe, "onnxruntime", **kw)
    sim = evaluate(task, qm.recipe, "torch", **kw)
    assert ort["integer_ops"]["kernels"].get("MatMulNBits") == len(ranking)
    assert ort["metrics"]["top1_agreement"] > 0.99 * sim["metrics"]["top1_agreement"]
    assert abs(ort["metrics"]["kl_to_fp32"] - sim["metrics"]["kl_to_fp32"]) < 0.05 * sim["metrics"]["kl_to_fp32"]


def test_mixed_in_int8_compute_promotes_w4a8_layers_to_w8a8_and_runs_them_at_level_4(tiny_task) -> None:
    """mixed-w4a8-w8a8: the size search with int8 compute in both widths; ONNX Runtime runs every
    layer as MatMulNBits with int8 dot products. Int8 compute is refused where it has no blocks."""
    from quantwise.api import build_quantized
    from quantwise.errors import Unsupported
    from quantwise.quantized import ActGranularity
    from quantwise.sweep.formats import LLM_FORMATS

    model = copy.deepcopy(tiny_task.model)
    with torch.no_grad():  # sharper next-token distributions: perplexity then feels int4 rounding (random weights)
        model.lm.model.embed_tokens.weight.mul_(30.0)
    task = dataclasses.replace(tiny_task, model=model)
    recipe = LLM_FORMATS["mixed-w4a8-w8a8"].build_recipe(max_drop_points=1.0)
    assert recipe.int8_compute and recipe.optimize == "size"
    qm = build_quantized(task, recipe)
    linear = [n for n, lq in qm.layers.items() if lq.kind == "linear"]
    assert qm.info["int8_layers"] and {qm.layers[n].dynamic_granularity for n in linear} == {ActGranularity.PER_BLOCK}
    assert {qm.layers[n].weight_qtype for n in qm.info["int8_layers"]} == {"int8"}
    kw = {"measure_memory": False, "latency_seconds": 0.1, "batch_sizes": (1,), "quantized": qm}
    ort = evaluate(task, qm.recipe, "onnxruntime", **kw)
    assert ort["integer_ops"]["kernels"].get("MatMulNBits (int8 compute)") == len(linear)
    with pytest.raises(Unsupported, match="int8 compute builds on a causal LM's weight blocks"):
        build_quantized(tiny_task, get_recipe("mixed", base="dynamic-int8", int8_compute=True))


def test_a_group_that_does_not_divide_the_input_falls_back_to_a_finer_one(tiny_task) -> None:
    from quantwise.numerics.granularity import PerGroup

    for method in ("rtn", "gptq"):
        qm = quantize(tiny_task.model, get_recipe("w4a16", group_size=128, method=method), tiny_task.calibration)
        fb = qm.info["group_size_fallback"]
        assert fb["lm.model.layers.0.self_attn.q_proj"] == 64  # hidden size 64
        assert "lm.model.layers.0.mlp.down_proj" not in fb  # its input (128) takes the group as asked
        assert qm.layers["lm.model.layers.0.self_attn.q_proj"].weight_granularity == PerGroup(64)
        assert qm.layers["lm.model.layers.0.mlp.down_proj"].weight_granularity == PerGroup(128)
        assert not [n for n in qm.skipped if "proj" in n]


def test_a_gguf_of_an_unsupported_architecture(tmp_path: Path, lm_text: Path) -> None:
    import gguf
    import numpy as np

    path = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(str(path), "no-such-arch")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = run_cli("quantize", "--model", str(path), "--data", str(lm_text), "--recipe", "w8a16")
    assert r.returncode == 2 and "cannot load the causal LM" in r.stderr and "Traceback" not in r.stderr


def test_a_tokenizer_larger_than_the_embedding(tmp_path: Path, lm_text: Path) -> None:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from quantwise.tasks.llm_load import smollm2_path

    gguf_file = smollm2_path()
    tok = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    cfg = LlamaConfig(
        vocab_size=1000,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
    )
    LlamaForCausalLM(cfg).save_pretrained(str(tmp_path / "m"))
    tok.save_pretrained(str(tmp_path / "m"))
    r = run_cli("quantize", "--model", str(tmp_path / "m"), "--data", str(lm_text), "--recipe", "w8a16")
    assert r.returncode == 2 and "embedding has 1000 rows" in r.stderr, r.stderr


def test_the_llm_mixed_searches_and_variants_run_by_name_only() -> None:
    """compare's default LLM set leaves out the hour-long mixed searches and the variants of a family
    it already has; a name or prefix selects them."""
    from quantwise.sweep.formats import select_formats

    default = {f.id for f, _ in select_formats(None, "onnxruntime", "causal-lm")}
    assert "w8a8-g32" in default and not {f for f in default if f.startswith("mixed")}
    named = {f.id for f, _ in select_formats("mixed", "onnxruntime", "causal-lm")}
    assert named == {"fp32", "mixed-w4-w8", "mixed-w8a8", "mixed-w4a8-w8a8"}
    # variants of a family already in the default set run by name too (a default compare fits 30 minutes)
    variants = {"w4a16-g32-asym", "w4a16-g128", "w4a16-g128-awq", "w4a16-g128-gptq-rot", "w4a8-g128-gptq"}
    variants |= {"w4a8-g128-gptq-rot"}
    assert not variants & default
    assert {"w4a16-g32", "w4a16-g128-gptq", "w8a8-per-token", "w8a8-per-token-sq", "w8a8-per-token-rot"} <= default
    assert variants <= {f.id for f, _ in select_formats("w4a16,w8a8,w4a8", "onnxruntime", "causal-lm")}


def test_zero_shot_rows_shared_by_one_token_choices_score_as_one_row_per_choice(tiny_task) -> None:
    """One-token continuations are read from the prompt's own row; the scores equal scoring every
    continuation in its own row (the unshared protocol), and only multi-token ones add rows."""
    from quantwise.tasks.llm import choice_batch, choice_rows

    prompt, conts = [5, 17, 42, 9], [[7], [300], [11, 12, 13], [8]]
    rows, picks = choice_batch(prompt, conts, pad=0)
    assert rows.shape == (2, 7)
    with torch.inference_mode():
        shared = tiny_task.model(rows).numpy()
        alone = [tiny_task.model(torch.tensor([prompt + c])).log_softmax(-1)[0] for c in conts]
    naive = [
        float(sum(lp[len(prompt) - 1 + j, t] for j, t in enumerate(c))) for lp, c in zip(alone, conts, strict=True)
    ]
    got = torch.log_softmax(torch.from_numpy(shared), -1)
    for (row, start, ids), want in zip(picks, naive, strict=True):
        assert float(sum(got[row, start - 1 + j, t] for j, t in enumerate(ids))) == pytest.approx(want, abs=1e-4)
    assert choice_rows(shared, picks, label=2)[0, 1] == float(torch.tensor(naive).argmax())
    assert choice_batch(prompt, [[7], [8]], pad=0)[0].shape == (1, 4)  # all one-token: the prompt alone


def test_onnxruntime_scores_generates_and_is_measured_through_one_step_graph(tiny_task, tmp_path: Path) -> None:
    """One export per trial: the KV-cache step graph, fed an empty cache, scores (batch > 1 too) what
    the torch model computes; a second session on two threads scores the same, and closing it keeps
    the first runner's kernel census; the memory child loads the same file."""
    import numpy as np

    from quantwise.api import lower
    from quantwise.measure.memory import peak_memory

    runner, module = lower(None, tiny_task, "onnxruntime", tmp_path, 1)
    assert sorted(p.name for p in tmp_path.glob("*.onnx") if ".optimized" not in p.name) == ["model.onnx"]
    import onnx

    from quantwise.runtime.onnx_lm import find_lm

    ops = [n.op_type for n in onnx.load(str(runner.artifact), load_external_data=False).graph.node]
    layers = find_lm(module).config.num_hidden_layers
    assert runner.attention.startswith("GroupQueryAttention") and ops.count("GroupQueryAttention") == layers
    two = (tiny_task.eval_batches[0][0].repeat(2, 1),)
    with torch.inference_mode():
        want = module(*two).numpy()
    got = runner.run(two)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    wide = runner.with_threads(2)
    assert np.abs(wide.run(two) - got).max() <= 1e-6 * np.abs(got).max()
    wide.close()
    assert runner.integer_ops()["total"] > 0  # the census file is still there
    prompt = tiny_task.generation.prompt[:, :16]
    with torch.inference_mode():
        ids = prompt
        for _ in range(4):  # greedy by the full-sequence torch model, without a cache
            ids = torch.cat([ids, module(ids)[:, -1:].argmax(-1)], dim=1)
    assert runner.generate(prompt, 4) == ids[0, 16:].tolist()
    assert (peak_memory("onnxruntime", runner.artifact, two, tiny_task.input_names) or 0) > 0
    runner.close()


def test_a_decoder_fused_attention_does_not_cover_gets_the_decomposed_graph_and_says_why() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from quantwise.runtime.onnx_gqa import fused_step

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=32, n_positions=32)).eval()
    step, why = fused_step(gpt2)
    assert step is None and "gpt2" in why
    # a Llama it covers: the fused module's own PyTorch forward computes what the model computes
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=64, max_position_embeddings=64,
    )  # fmt: skip
    lm = LlamaForCausalLM(cfg).eval()
    step, why = fused_step(lm)
    assert step is not None, why
    ids = torch.randint(0, 64, (2, 9))
    empty = [torch.zeros(2, 2, 0, 8) for _ in range(4)]
    with torch.inference_mode():
        want = lm(ids).logits
        full = step(ids, *empty)
        head = step(ids[:, :5], *empty)  # the first 5 tokens, then the rest through their cache
        rest = step(ids[:, 5:], *head[1:])
    assert torch.allclose(full[0], want, atol=1e-5) and torch.allclose(rest[0], want[:, 5:], atol=1e-5)
