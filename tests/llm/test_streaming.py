"""Streaming weight-only quantization (``quantwise stream``): one block at a time from safetensors
shards, equal to the in-memory path bit for bit, and run under a memory limit the model exceeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from big_llama import run_capped, write_big_llama

from quantwise.api import quantize
from quantwise.cli import main
from quantwise.errors import UserError
from quantwise.pipeline.shards import read_streamed
from quantwise.pipeline.streaming import load_streamed, stream_quantize
from quantwise.recipes import WeightOnlyRecipe
from quantwise.tasks.llm_load import load_causal_lm


def _calib(n: int = 3, length: int = 24) -> list[tuple[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randint(0, 1000, (1, length), generator=g),) for _ in range(n)]


@pytest.mark.parametrize(
    ("recipe", "folder"),
    [
        (WeightOnlyRecipe(bits=4, group_size=32, method="gptq"), "sharded_llama"),
        (WeightOnlyRecipe(bits=8, method="rtn", embeddings=True), "sharded_llama"),
        (WeightOnlyRecipe(bits=4, group_size=32, method="gptq", head_bits=8, symmetric=False), "sharded_llama"),
        (WeightOnlyRecipe(bits=4, group_size=32, method="awq"), "sharded_llama"),
        (WeightOnlyRecipe(bits=4, group_size=32, method="awq"), "sharded_untied_llama"),
    ],
    ids=["gptq-int4-g32", "rtn-int8", "gptq-asym-head8", "awq-tied", "awq-untied-head"],
)
def test_streamed_equals_the_in_memory_path_bit_for_bit(recipe, folder: str, request, tmp_path: Path):
    folder = request.getfixturevalue(folder)
    calib = _calib()
    model, _ = load_causal_lm(folder)
    qm = quantize(model, recipe, calib)
    manifest = stream_quantize(folder, recipe, calib, tmp_path / "s")
    _, layers = read_streamed(tmp_path / "s")
    config = json.loads((folder / "config.json").read_text())
    blocks, tied = config["num_hidden_layers"], config["tie_word_embeddings"]
    # untied: the embedding table is quantized too (the recipe's default embeddings=True)
    assert set(layers) == set(qm.layers) and len(layers) == blocks * 7 + 1 + (not tied)
    for name, lq in qm.layers.items():
        got = layers[name]
        assert got.weight_qtype == lq.weight_qtype and got.weight_granularity == lq.weight_granularity, name
        assert torch.equal(got.weight_q, lq.weight_q), name
        assert torch.equal(got.weight_scale, lq.weight_scale), name
        assert torch.equal(got.weight_zero_point, lq.weight_zero_point), name
    assert manifest["skipped"] == qm.skipped
    assert manifest["tied"] == ({"lm.lm_head.weight": "lm.model.embed_tokens.weight"} if tied else {})
    if recipe.method == "awq":  # the same scales found, and the same layers left unscaled and why
        got, want = manifest["info"]["awq"], qm.info["awq"]
        assert (
            got["exponents"] == want["exponents"] and got["groups"] == want["groups"] == blocks * 3
        )  # q/k/v, gate/up, down through up
        assert got["unscaled_layers"] == want["unscaled_layers"] and got["tied_not_scaled"] == want["tied_not_scaled"]
        # an untied head reads a slice of the final norm's output, not the output itself: left unscaled
        assert ("lm.lm_head" in got["unscaled_layers"]) == (not tied)
    streamed = load_streamed(tmp_path / "s")
    x = calib[0][0]
    with torch.no_grad():
        assert torch.equal(streamed.model(x), qm.model(x))  # the same model, computed the same way


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_gpt2_conv1d_layers_stream_as_the_in_memory_path_quantizes_them(method: str, sharded_gpt2: Path, tmp_path):
    recipe = WeightOnlyRecipe(bits=4, group_size=32, method=method)
    calib = _calib()
    model, _ = load_causal_lm(sharded_gpt2)
    qm = quantize(model, recipe, calib)
    manifest = stream_quantize(sharded_gpt2, recipe, calib, tmp_path / "s")
    _, layers = read_streamed(tmp_path / "s")
    # 4 Conv1D per block (c_attn, attn.c_proj, c_fc, mlp.c_proj) read transposed from the checkpoint,
    # the tied head and the position table
    assert set(layers) == set(qm.layers) and len(layers) == 3 * 4 + 2
    assert manifest["info"]["rewritten_as_linear"] == qm.info["rewritten_as_linear"]
    for name, lq in qm.layers.items():
        assert torch.equal(layers[name].weight_q, lq.weight_q), name
        assert torch.equal(layers[name].weight_scale, lq.weight_scale), name
    streamed = load_streamed(tmp_path / "s")
    x = calib[0][0]
    with torch.no_grad():
        assert torch.equal(streamed.model(x), qm.model(x))


def test_streaming_refuses_what_it_cannot_do_faithfully(sharded_llama: Path, tmp_path: Path):
    with pytest.raises(UserError, match="method rtn, gptq or awq, got awq-gptq"):
        stream_quantize(sharded_llama, WeightOnlyRecipe(bits=4, method="awq-gptq"), _calib(), tmp_path / "a")
    with pytest.raises(UserError, match="GPTQ needs calibration"):
        stream_quantize(sharded_llama, WeightOnlyRecipe(bits=4, method="gptq"), [], tmp_path / "b")
    bin_only = tmp_path / "bin"
    bin_only.mkdir()
    (bin_only / "config.json").write_text((sharded_llama / "config.json").read_text())
    with pytest.raises(UserError, match="no model.safetensors"):
        stream_quantize(bin_only, WeightOnlyRecipe(bits=4), [], tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_stream_command_calibrates_on_the_users_text(sharded_llama: Path, lm_text: Path, tmp_path: Path, capsys):
    out = tmp_path / "q"
    rc = main(
        ["stream", "--model", str(sharded_llama), "--data", str(lm_text), "--method", "gptq", "--group-size", "32"]
        + ["--window", "32", "--windows", "2", "--out", str(out)]
    )
    assert rc == 0 and "22 quantized layers" in capsys.readouterr().out
    manifest = json.loads((out / "quantwise-streamed.json").read_text())
    assert manifest["recipe"]["method"] == "gptq" and manifest["blocks"] == "lm.model.layers (3)"
    assert main(["stream", "--model", str(sharded_llama), "--method", "gptq", "--out", str(tmp_path / "n")]) == 2
    assert "pass --data" in capsys.readouterr().err


def test_streaming_runs_under_a_memory_limit_the_model_exceeds(tmp_path: Path):
    """24 blocks of 1024-wide layers (0.66 GiB in float32) under an address-space cap of what the
    process's imports use plus 192 MiB: loading the model whole fails, streaming does not. (Round
    to nearest: GPTQ of 168 layers takes minutes here; benchmarks/streaming.py runs GPTQ capped.)"""
    folder = tmp_path / "big"
    total = write_big_llama(folder)
    headroom = 192 * 2**20
    assert total > 3 * headroom
    whole = run_capped(folder, tmp_path / "unused", "whole", headroom, "rtn")
    assert whole["whole"] == "failed"  # the cap binds: the model does not fit under it
    got = run_capped(folder, tmp_path / "out", "stream", headroom, "rtn")
    assert got["layers"] == 24 * 7 + 1
    _, layers = read_streamed(tmp_path / "out")
    assert layers["lm.model.layers.23.mlp.down_proj"].weight_q.shape == (1024, 1024)


def test_the_calibration_window_fits_the_models_positions(sharded_gpt2: Path, lm_text: Path, tmp_path: Path, capsys):
    args = ["stream", "--model", str(sharded_gpt2), "--data", str(lm_text), "--method", "gptq", "--windows", "1"]
    assert main([*args, "--window", "256", "--out", str(tmp_path / "a")]) == 2
    assert "longer than the model's 128 positions" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert main([*args, "--out", str(tmp_path / "b")]) == 0  # the default: 512, or the model's 128 positions
